-- wrk script: the short chats of perf/chat.lua from 1,000 distinct users, none streamed.
-- wrk -t1 -c64 -d10s -s perf/chat-plain.lua http://127.0.0.1:8080/v1/chat/completions
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local plain = '{"model":"llama2-7b","messages":[{"role":"user","content":"Write one short sentence about rate limits."}],"max_tokens":16}'
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, { ["X-User-ID"] = "user-" .. (n % 1000) }, plain)
end
