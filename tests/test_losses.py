"""RM and DPO losses against hand-computed values, and our DPO loss + gradients against TRL's DPOTrainer."""

import math

import pytest
import torch

from rlaif_ray.learner import losses


def nls(x):  # −log σ(x), by hand
    return math.log1p(math.exp(-x))


def test_bradley_terry_hard_soft_and_margin():
    r_a, r_b = torch.tensor([1.0]), torch.tensor([0.0])
    assert losses.bradley_terry_loss(r_a, r_b).item() == pytest.approx(nls(1.0))  # 0.3132617
    assert losses.bradley_terry_loss(r_a, r_b, 0.5).item() == pytest.approx(0.5 * nls(1.0) + 0.5 * nls(-1.0))
    assert losses.bradley_terry_loss(r_a, r_b, 1.0, 0.5).item() == pytest.approx(nls(0.5))  # 0.4740770
    # p = 0 means b is better: the same as swapping a and b
    assert losses.bradley_terry_loss(r_a, r_b, 0.0).item() == pytest.approx(nls(-1.0))
    # batch mean with per-example soft labels
    got = losses.bradley_terry_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.8]))
    assert got.item() == pytest.approx((nls(1.0) + 0.8 * nls(2.0) + 0.2 * nls(-2.0)) / 2)


def test_dpo_sigmoid_conservative_soft_ipo():
    h = torch.tensor([2.0])
    assert losses.dpo_sigmoid_loss(h, 0.5).item() == pytest.approx(nls(1.0))
    assert losses.dpo_sigmoid_loss(h, 0.5, 0.1).item() == pytest.approx(0.9 * nls(1.0) + 0.1 * nls(-1.0))
    assert losses.dpo_soft_label_loss(h, 0.5, torch.tensor([0.8])).item() == pytest.approx(
        0.8 * nls(1.0) + 0.2 * nls(-1.0))
    assert losses.ipo_loss(torch.tensor([0.3]), 0.5).item() == pytest.approx(0.49)


def test_dpo_loss_dispatch_builds_margin_from_logprobs():
    # policy chosen −10, rejected −12, reference −11 / −11: h = (−10+11) − (−12+11) = 2
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.0))
    loss, stats = losses.dpo_loss("sigmoid", pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx(nls(1.0))
    assert stats["reward_chosen"].item() == pytest.approx(0.5)
    assert stats["reward_margin"].item() == pytest.approx(1.0)
    assert stats["reward_accuracy"].item() == 1.0
    loss, _ = losses.dpo_loss("ipo", pc, pr, rc, rr, beta=0.5, len_c=torch.tensor([2.0]), len_r=torch.tensor([4.0]))
    assert loss.item() == pytest.approx((1 / 2 - (-1) / 4 - 1.0) ** 2)  # h_tok = 0.75
    soft, _ = losses.dpo_loss("sigmoid", pc, pr, rc, rr, beta=0.5, p=torch.tensor([0.8]))
    assert soft.item() == pytest.approx(0.8 * nls(1.0) + 0.2 * nls(-1.0))
    with pytest.raises(ValueError, match="hinge"):
        losses.dpo_loss("hinge", pc, pr, rc, rr, beta=0.5)


def test_sequence_logprobs_counts_only_response_tokens():
    logits = torch.zeros(1, 4, 4)  # uniform over 4 tokens: every log-prob is −log 4
    ids = torch.tensor([[0, 1, 2, 3]])
    mask = torch.tensor([[0, 0, 1, 1]])
    assert losses.sequence_logprobs(logits, ids, mask).item() == pytest.approx(-2 * math.log(4))
    logits[0, 1, 2] = 10.0  # position 1 predicts token 2
    expect = (10 - math.log(math.exp(10) + 3)) - math.log(4)
    assert losses.sequence_logprobs(logits, ids, mask).item() == pytest.approx(expect, abs=1e-6)


def _trl_trainer(model_dir, rows, out_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from rlaif_ray.models import load_tokenizer

    tok = load_tokenizer(str(model_dir), padding_side="right")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r.prompt}],
                               "chosen": [{"role": "assistant", "content": r.chosen}],
                               "rejected": [{"role": "assistant", "content": r.rejected}]} for r in rows])
    args = DPOConfig(output_dir=str(out_dir), per_device_train_batch_size=len(rows), beta=0.1, loss_type=["sigmoid"],
                     use_cpu=True, bf16=False, report_to=[], max_length=128, dataloader_num_workers=0, seed=0,
                     precompute_ref_log_probs=True, logging_steps=1, save_strategy="no",
                     train_sampling_strategy="sequential")
    return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok), tok


def test_dpo_loss_and_gradients_equal_trl(tiny_model_dir, tmp_path):
    """Same tiny model, same 6 pairs: our DPOObjective vs TRL 1.16 DPOTrainer.compute_loss."""
    from benchmarks.bench_learner import synthetic_preferences
    from rlaif_ray.learner.objectives import DPOObjective, collate_preferences

    rows = synthetic_preferences(6, seed=1)
    trainer, tok = _trl_trainer(tiny_model_dir, rows, tmp_path)
    from transformers import AutoModelForCausalLM

    ours_model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)  # same weights
    inputs = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_loss.backward()

    obj = DPOObjective(beta=0.1)
    batch = collate_preferences(rows, tok, 128)
    # the same token sequences as TRL's collator (chosen block, then rejected block)
    width = inputs["input_ids"].shape[1]
    flat = torch.cat([batch["input_ids"][:, 0], batch["input_ids"][:, 1]])[:, :width]
    assert torch.equal(flat, inputs["input_ids"].cpu())
    ours_model.eval()
    with torch.no_grad():
        batch["ref_logps"] = obj.forward(ours_model, batch)["logps"]
    ours_model.train()
    loss, stats = obj.loss(ours_model, batch)
    loss.backward()
    assert abs(loss.item() - trl_loss.item()) <= 1e-5
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0
    trl_params = dict(trainer.model.named_parameters())

    def grad(p):
        return p.grad if p.grad is not None else torch.zeros_like(p)
    none = [(n, p.grad is None, trl_params[n].grad is None) for n, p in ours_model.named_parameters()
            if (p.grad is None) != (trl_params[n].grad is None)]
    worst = max((grad(p) - grad(trl_params[n])).abs().max().item() for n, p in ours_model.named_parameters())
    assert worst <= 1e-5, none
    assert any(p.grad.abs().sum() > 0 for p in ours_model.parameters())
