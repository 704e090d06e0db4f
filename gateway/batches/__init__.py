"""The Batch API (``/v1/batches``): a ``batch`` file of requests validated line by line at creation
(``lines``), kept as one row per request (``service``), run by any gateway's batch runner through the same
serving path as the HTTP routes, at the lowest priority class, budget-only admission and the batch price
(``runner``, ``queue``), and answered as ``batch_output`` files (``output``)."""
