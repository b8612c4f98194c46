"""Evidence about every latent of a trained SAE, measured against baselines.

- ``units``: the SAE's latents and the baseline unit families (neurons, random dictionary, PCA)
- ``stats``: label counts, purity with Wilson intervals, lift, entropy, class sets
- ``families``: the interpretability metrics of a family (metrics/interpretability.json)
- ``probing``: sparse probing (k units per digit, logistic regression)
- ``hypotheses``: class-set hypotheses derived on train, graded by the interval, scored on test
- ``causal``: direct logit attribution, intervention and ablation through the spliced model
- ``examples``: top and quantile-band examples, input-gradient heatmaps
- ``select``: which latents the 50-feature report shows (``analysis.select``)
- ``table``: the per-latent table as CSV rows
- ``run``: the analyze and baselines stages' work, built from the above
"""
