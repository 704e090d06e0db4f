"""Fine-tuning as the API serves it: uploaded files (``files``, their response ``schemas``; routes in
``gateway.routes.files``) and fine-tuning jobs (``creation``, with the request bodies in ``models``; the job
objects are ``adapters.job_objects``; routes in ``gateway.routes.fine_tuning``); training itself runs in the worker
(``adapters.worker``)."""
