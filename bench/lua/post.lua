-- B3 request: the same JSON body on every request.
wrk.method = "POST"
wrk.body = '{"name":"Alice"}'
wrk.headers["Content-Type"] = "application/json"
