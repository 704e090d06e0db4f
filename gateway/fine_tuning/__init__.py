"""Fine-tuning as the API serves it: uploaded files (``files``, ``files_routes``, their response ``schemas``) and
fine-tuning jobs (``jobs_routes`` over ``creation``, with the request bodies in ``models``; the job objects are
``adapters.job_objects``); training itself runs in the worker
(``adapters.worker``)."""
