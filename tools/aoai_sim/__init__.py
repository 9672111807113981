"""aoai-sim: a simulator of Azure OpenAI deployments for testing nginx-llm-router.

The package is split by concern:

  config.py      reading and checking the JSON configuration (and live updates)
  accounting.py  what a request asks for and what it costs (charge, "true" tokens)
  limits.py      one deployment's state: token/request windows, PTU bucket, counters
  replies.py     Azure-shaped bodies: errors, chat/completions/responses/embeddings, SSE
  certs.py       a throw-away CA and one certificate per hostname (openssl CLI)
  server.py      the HTTP(S) servers, routing, faults, control port and main()

Run it through the launcher tools/aoai-sim.  Python 3.11 standard library only.
"""
