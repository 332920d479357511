"""Measuring what bsqvit makes: tokenizer evaluation, rate-distortion against other codecs, visual
reports, throughput benchmarks and the quantizer ablation.

Modules (import the one you need; this package imports none of them, so that e.g. the BD-rate
helpers do not pull in the trainer):

* :mod:`~bsqvit.evaluation.protocol` - ``EvalConfig``, the eval protocols and their checks;
* :mod:`~bsqvit.evaluation.items` - the items of an evaluation (images, video clips), batched;
* :mod:`~bsqvit.evaluation.tokenizer` - ``evaluate`` (``bsqvit eval``), ``compute_reference_stats``
  (``bsqvit fid-stats``);
* :mod:`~bsqvit.evaluation.scores` - dataset-level scores of an evaluation (rFID, rFVD, means, tokens);
* :mod:`~bsqvit.evaluation.results` - its outputs: JSON, Markdown, the visual report's files;
* :mod:`~bsqvit.evaluation.report` - PNG grids, frame strips, side-by-side MP4s;
* :mod:`~bsqvit.evaluation.rd` - ``run_rd`` (``bsqvit rd``) and its distortion ``Metrics``;
* :mod:`~bsqvit.evaluation.baselines` - the classical codecs' quality sweeps (Pillow, PyAV);
* :mod:`~bsqvit.evaluation.bdrate` - BD-rate and PSNR at equal rate;
* :mod:`~bsqvit.evaluation.rd_report` - the RD report's Markdown, plot and files;
* :mod:`~bsqvit.evaluation.bench` - ``bench`` (``bsqvit bench``);
* :mod:`~bsqvit.evaluation.ablation` - ``run_ablation`` (``bsqvit ablate-quantizers``).
"""
