"""Fine-tuning as the API serves it: uploaded files (``files``, ``files_routes``) and fine-tuning jobs
(``jobs_routes``); training itself runs in the worker (``adapters.worker``)."""
