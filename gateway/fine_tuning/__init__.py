"""Fine-tuning as the API serves it: uploaded files (``files``, ``files_routes``) and fine-tuning jobs
(``jobs_routes`` over ``creation``, with the request bodies in ``models``); training itself runs in the worker
(``adapters.worker``)."""
