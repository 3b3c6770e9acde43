"""The GPU side: one retrain job (:mod:`worker.job`) and the Celery worker that runs jobs from Redis
(:mod:`worker.celery_app`). It imports no Discord, scheduler or database code: the GPU host installs none of it."""
