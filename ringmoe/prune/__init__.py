"""Post-training expert pruning: routing calibration on real data (``calibrate``), parameter budgets
(``budget``), the plan of which experts to keep or fold (``plan``, ``merge``, ``rescale``), applying it to a
consolidated checkpoint (``apply``, ``run``) and downstream retention of the pruned encoder (``downstream``,
``retention``)."""
