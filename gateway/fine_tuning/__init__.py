"""Fine-tuning as the API serves it: uploaded files (``files``; routes in ``gateway.routes.files``) and fine-tuning
jobs (``gateway.routes.fine_tuning``); training itself runs in the worker (``adapters.worker``)."""
