"""The test harness, shared by the tests and bench/: real stand-ins for the services loraloop talks to, and the
helpers more than one test module uses. Test modules import from here, never from each other.

- ``ollama_server``: a local server speaking Ollama's HTTP API (``OllamaTestServer``), llama.cpp behind real models.
- ``discord``: the Discord stand-in (the recording REST server ``DiscordAPI``, the ``Gateway`` that feeds
  discord.py events, payload builders) and the ``discord_api`` fixture.
- ``bot``: a LoraloopBot's settings (``make_settings``), its login (``start_bot``), the people in the test
  guild, and their steps (``mention``, ``ask``, ``teach_and_approve``, ``add_test_command``).
- ``polling``: ``wait_until``, the one way to wait for something that happens elsewhere.
- ``db``: the migrated ``store`` fixture on SQLite and PostgreSQL (``make_store``); each test's database starts as a
  copy of one migrated once per process (``seed_sqlite``, a PostgreSQL template database).
- ``models``: tiny offline models and their GGUFs, llama.cpp's converters (session fixtures).
- ``ollama``: the ``ollama_server`` fixture and LoRA adapters for the tiny models (``make_adapter``).
- ``snapshots``: synthetic teaching data, snapshot directories and the small training settings ``FAST``.
- ``retrain``: the retrain loop's settings, data, job spec and the whole loop through Discord (``full_loop``, with a
  second community retraining beside it: ``two_communities``).
- ``gate``: the deploy gate's scripted base, fake adapters and eval snapshot.
- ``parity``: PEFT adapters and llama.cpp's logits, what GGUF conversions are checked against.
- ``services``: the PostgreSQL database and Redis db each run (each xdist worker) claims on the test services.
- ``compose``: the deployment kit's compose file, Dockerfiles and .dockerignore, read the way Docker does.

``db``, ``models``, ``ollama`` and ``discord`` are pytest plugins: tests/conftest.py loads their fixtures.
"""
