-- wrk script: short chats from 1,000 distinct users, one in five streamed (SSE).
-- wrk -t1 -c50 -d10s -s perf/chat.lua http://127.0.0.1:8080/v1/chat/completions
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local plain = '{"model":"llama2-7b","messages":[{"role":"user","content":"Write one short sentence about rate limits."}],"max_tokens":16}'
local streamed = '{"model":"llama2-7b","messages":[{"role":"user","content":"Write one short sentence about rate limits."}],"max_tokens":16,"stream":true}'
local n = 0
request = function()
  n = n + 1
  local body = plain
  if n % 5 == 0 then body = streamed end
  return wrk.format(nil, nil, { ["X-User-ID"] = "user-" .. (n % 1000) }, body)
end
