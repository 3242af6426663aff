-- wrk script: short chats from 1,000 distinct users, none streamed, every user message
-- different (a run id and a counter in it), so no per-message cache can serve one.
-- wrk -t1 -c64 -d10s -s perf/chat-unique.lua http://127.0.0.1:8080/v1/chat/completions -- <run id>
-- The run id (default: the clock) keeps a warm-up and the timed run from sharing messages.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local run = tostring(os.time())
local n = 0
init = function(args)
  if args[1] ~= nil then run = args[1] end
end
request = function()
  n = n + 1
  local body = '{"model":"llama2-7b","messages":[{"role":"user","content":"Write one short sentence about rate limits, question '
    .. n .. ' of run ' .. run .. '."}],"max_tokens":16}'
  return wrk.format(nil, nil, { ["X-User-ID"] = "user-" .. (n % 1000) }, body)
end
