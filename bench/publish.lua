-- wrk script: POST /api/publish with a ~100-byte payload, keep-alive.
-- The channel comes from HERALD_CHANNEL (default bench:wrk; a durable namespace measures storage).
local channel = os.getenv("HERALD_CHANNEL") or "bench:wrk"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"channel":"' .. channel .. '","data":{"s":0,"t":0,"p":"' .. string.rep("x", 70) .. '"}}'
