"""Our JumpReLU training step against SAELens's, side by side in one process, on the same activations and shapes.

SAELens is not a dependency of the project; run this with an interpreter that has it (`pip install sae-lens`
in a separate venv; bench.py puts the project's sources on the path):

    /path/to/saelens-venv/bin/python bench/vs_saelens.py   # -> bench/vs_saelens.json

Both sides train 512 latents on the committed run's standardised train activations, batch 256, Adam at lr 4e-3
with gradient clipping at norm 1, from the same batches. SAELens is driven by a plain loop (its
``training_forward_pass``, backward, clip, step), without its runner's logging, so the comparison is of the step
itself. The variants alternate in short rounds (this VM's speed drifts by up to ±20% over seconds) and the
reported figure is the median over rounds of steps/s; the speed-up is our steps/s over SAELens's.
"""
import dataclasses
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # run_phase's progress bar

import torch  # noqa: E402
from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig  # noqa: E402
from sae_lens.saes.sae import TrainStepInput  # noqa: E402

from bench import training_inputs  # noqa: E402  bench/bench.py: this script's folder is first on sys.path
from sae_pipeline.runtime import generator  # noqa: E402
from sae_pipeline.sae_train import final_phase, new_sae, run_phase  # noqa: E402

LR, LAM, CLIP = 4e-3, 0.2, 1.0


def saelens_sae(mode: str, d_in: int, d_sae: int) -> JumpReLUTrainingSAE:
    if mode == "gdm":  # DeepMind's step L0 loss, as SAELens's JumpReLU default
        cfg = JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, jumprelu_init_threshold=0.01,
                                        jumprelu_bandwidth=0.05, l0_coefficient=LAM)
    else:  # Anthropic's tanh penalty with decoder norms and the pre-activation loss
        cfg = JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, jumprelu_init_threshold=0.1, jumprelu_bandwidth=2.0,
                                        jumprelu_sparsity_loss_mode="tanh", l0_coefficient=LAM,
                                        pre_act_loss_coefficient=3e-6, jumprelu_ste_to_input=True)
    return JumpReLUTrainingSAE(cfg)


def saelens_steps(sae, opt, x, order, start, steps, batch):
    for i in range(start, start + steps):
        xb = x[order[i * batch % len(order):][:batch]]
        out = sae.training_forward_pass(TrainStepInput(sae_in=xb, coefficients={"l0": LAM}, dead_neuron_mask=None,
                                                       n_training_steps=i, is_logging_step=False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)


def main(steps=200, rounds=6):
    x, readout, cfg = training_inputs()
    b, d, m = cfg.batch_size, x.shape[1], cfg.latents
    epochs = steps * b / len(x)
    ours = new_sae(cfg, x, 0)
    lens = {mode: saelens_sae(mode, d, m) for mode in ("gdm", "anthropic")}
    opts = {mode: torch.optim.Adam(s.parameters(), lr=LR) for mode, s in lens.items()}
    order = torch.randperm(len(x), generator=generator(0, 11))
    variants = {
        # train_sae's phase outside its KL window (MSE + λ·L0 + pre-activation loss, clipping), and inside it
        "ours": lambda r: run_phase(ours, x, dataclasses.replace(final_phase(cfg, LAM), epochs=epochs, kl_coef=0.0),
                                    cfg, generator(0, 20 + r)),
        "ours_kl": lambda r: run_phase(ours, x, dataclasses.replace(final_phase(cfg, LAM), epochs=epochs,
                                                                    kl_epochs=epochs), cfg, generator(0, 40 + r),
                                       readout=readout),
        "saelens_gdm": lambda r: saelens_steps(lens["gdm"], opts["gdm"], x, order, r * steps, steps, b),
        "saelens_anthropic": lambda r: saelens_steps(lens["anthropic"], opts["anthropic"], x, order, r * steps,
                                                     steps, b),
    }
    for run in variants.values():  # warm-up
        run(99)
    rates = {k: [] for k in variants}
    for r in range(rounds):
        for k, run in variants.items():
            t0 = time.perf_counter()
            run(r)
            rates[k].append(steps / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    import sae_lens
    out = {"machine": f"{os.cpu_count()} cores", "torch": torch.__version__, "sae_lens": sae_lens.__version__,
           "threads": torch.get_num_threads(), "steps_per_round": steps, "rounds": rounds,
           "steps_per_s": {k: round(v, 1) for k, v in med.items()},
           "steps_per_s_per_round": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
           "speedup_vs_saelens_gdm": round(med["ours"] / med["saelens_gdm"], 2),
           "speedup_vs_saelens_anthropic": round(med["ours"] / med["saelens_anthropic"], 2),
           "speedup_kl_window_vs_saelens_gdm": round(med["ours_kl"] / med["saelens_gdm"], 2)}
    print(json.dumps(out, indent=2))
    with open(os.path.join(os.path.dirname(__file__), "vs_saelens.json"), "w") as fh:
        json.dump(out, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main(**({"steps": 20, "rounds": 1} if "--smoke" in sys.argv else {}))
