-- wrk script: short non-streaming chats from 1,000 distinct users.
-- wrk -t2 -c64 -d10s -s perf/chat.lua http://127.0.0.1:8080/v1/chat/completions
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local body = '{"model":"llama2-7b","messages":[{"role":"user","content":"Write one short sentence about rate limits."}],"max_tokens":16}'
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, { ["X-User-ID"] = "user-" .. (n % 1000) }, body)
end
