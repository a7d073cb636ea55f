-- wrk script: POST /api/publish with a ~100-byte payload, keep-alive.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"channel":"bench:wrk","data":{"s":0,"t":0,"p":"' .. string.rep("x", 70) .. '"}}'
