"""Reference training workloads. Each declares its traits; sparsity is measured.

========  ==============================  =============  =========================================
name      class                           metric         data (size=1)
========  ==============================  =============  =========================================
cv        cv.DigitsCNN                    val_accuracy   sklearn digits, 1,437 train / 360 val
tabular   tabular.DiabetesMLP             val_mse (min)  sklearn diabetes, 354 train / 88 val
nlp       nlp.ZipfTextClassification      val_accuracy   generated Zipf corpus, 6,000 / 1,000 docs
recsys    recsys.ImplicitMF               val_auc        generated implicit feedback, 1,000 users
========  ==============================  =============  =========================================

``zoo/`` (``autoopt.tasks.zoo``) holds 14 generated task families (86 instances) that the
recommender's dense lr sweep runs on; ``autoopt.tasks.zoo.instances()`` lists them.

A default trial (Adam, default epochs and batch size, size=1) takes about 0.1 to 1.5 s on one
CPU thread. ``size`` scales data (and vocabulary, users, model width) for GPU benchmarks; data is
generated deterministically from (seed, size). Submodules are imported on demand by
:func:`autoopt.task.load_task`, so importing this package stays cheap.
"""
