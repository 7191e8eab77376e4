"""Curated mutation testing: does a plausible one-line bug in the science fail a fast test?

Each mutant below is a hand-written single-line change to a module where a silent bug would
change a published number (the MaxUp objective, certification, experiment identity, table
statistics and the cell rule, checkpointing/resume, the language-model MaxUp selection, the
optimiser and schedule as applied, randomness between epochs, reported metrics, the
language-model training loop), paired with the fast tests that should notice it. For each
mutant the tool:

1. takes a scratch copy of the repository (``git archive HEAD`` by default, so a tree others
   are editing is never read half-written, and never mutated: the copy lives in a temporary
   directory and is imported through ``PYTHONPATH``);
2. checks the mutant's text occurs exactly once and changes exactly one line;
3. runs the listed tests once unmutated (all must pass), then once per mutant with ``-x``;
4. restores the file and records *killed* (a test failed or errored, or the run timed out)
   or *survived*, with the first failing test.

It writes ``docs/mutation.md``: each mutant, its line, the test that killed it, and every
survivor with the reason it is acceptable (an equivalent mutant). A survivor without such a
reason, or a stale mutant (its text no longer in the module), makes the exit status 1.

Usage::

    .venv/bin/python benchmarks/mutation.py               # all mutants, one at a time
    .venv/bin/python benchmarks/mutation.py --jobs 2      # two scratch copies in parallel
    .venv/bin/python benchmarks/mutation.py --only certify-class-from-estimation
    .venv/bin/python benchmarks/mutation.py --source worktree   # the working tree, uncommitted

Not part of CI's pass/fail (several minutes on 2 cores); rerun it when those modules change.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
DOC = ROOT / "docs" / "mutation.md"
TIMEOUT_S = 600

# Test files and their fast tests, named once.
T_OBJ = "tests/test_objective.py"
T_CERT = "tests/test_certify.py"
T_ID = "tests/test_identity.py"
T_AN = "tests/test_analysis.py"
T_CKPT = "tests/test_checkpoint.py"
T_ENG = "tests/test_engine.py"
T_LM = "tests/test_lm_model.py"

OBJ_GRAD = f"{T_OBJ}::test_gradient_is_gradient_of_explicit_worst_copies"
OBJ_NAIVE = f"{T_OBJ}::test_efficient_equals_naive"
OBJ_BN = f"{T_OBJ}::test_selection_pass_leaves_bn_stats_and_modes_and_matches_hand_forward"
OBJ_SOFT = f"{T_OBJ}::test_soft_labels_max_is_over_each_copys_own_mixed_loss"
OBJ_GAP = f"{T_OBJ}::test_gap_and_wins_match_hand_computation"
OBJ_M = f"{T_OBJ}::test_m_override_per_call_uses_m_copies"
OBJ_F64 = f"{T_OBJ}::test_regression_soft_cross_entropy_keeps_float64"
OBJ_M1 = f"{T_OBJ}::test_m1_is_standard_augmentation_training"
CERT_SEL = f"{T_CERT}::test_regression_certify_takes_the_class_from_the_selection_sample"
CERT_EST = f"{T_CERT}::test_certify_counts_the_selected_class_in_the_estimation_sample"
CERT_SPY = f"{T_CERT}::test_certify_draws_n0_then_n_samples_with_the_callers_generator"
CERT_CONST = f"{T_CERT}::test_constant_classifier_radius"
CERT_LIN = f"{T_CERT}::test_linear_classifier_radius_sound_and_tight"
CERT_RATE = (f"{T_CERT}::"
             "test_certificate_failure_rate_matches_its_exact_value_and_is_at_most_alpha")
CERT_KNOWN = f"{T_CERT}::test_bound_and_radius_known_answers"
CERT_EDGE = f"{T_CERT}::test_bound_edge_cases"
CERT_COUNTS = f"{T_CERT}::test_sample_noise_counts_shape_sum_and_mode"
CERT_SEED = f"{T_CERT}::test_image_seed_differs_per_image_and_per_run_seed"
CERT_PRED = f"{T_CERT}::test_predict_confident"
CERT_BOUNDARY = f"{T_CERT}::test_linear_classifier_on_boundary_abstains"
CERT_ACC = f"{T_CERT}::test_certified_accuracy_hand_computed"
CERT_CLI = f"{T_CERT}::test_cli_end_to_end_known_answer"
CERT_SHARDS = f"{T_CERT}::test_certify_dataset_shards_equal_whole_run"
ID_RULE = f"{T_ID}::test_trial_and_arm_ids_follow_the_documented_rule"
ID_LOCAL = f"{T_ID}::test_run_local_and_certification_settings_keep_trial_and_arm"
ID_SEED = f"{T_ID}::test_seed_changes_the_trial_not_the_arm"
ID_CERT = f"{T_ID}::test_certification_id_is_trial_plus_certify_settings"
AN_AGG = f"{T_AN}::test_aggregate_known_answer_against_numpy_scipy"
AN_SHARED = f"{T_AN}::test_regression_shared_trials_count_once_in_every_table"
AN_BASE = f"{T_AN}::test_regression_baseline_is_the_exact_counterpart_never_pooled"
AN_NAN = f"{T_AN}::test_nan_and_failed_seeds_are_shown_against_their_arm"
AN_RULE = f"{T_AN}::test_cell_rule_three_arms_in_order_of_appearance_never_ranked_by_result"
AN_ARMS = f"{T_AN}::test_several_arms_in_one_cell_are_each_shown_none_chosen"
AN_BOLD = f"{T_AN}::test_table3_markdown_bold_missing_and_n"
AN_CI5 = f"{T_AN}::test_inside_ci_needs_five_seeds"
AN_T8 = f"{T_AN}::test_table8_envelope_cpu_scale_any_dataset"
AN_T8_SIGMA = f"{T_AN}::test_regression_table8_is_the_envelope_over_sigma_of_per_sigma_means"
AN_BOLD_SIG = f"{T_AN}::test_regression_bold_needs_a_significant_difference"
AN_T8_TWO = f"{T_AN}::test_table8_seeds_of_one_arm_certified_at_two_sigmas_are_two_settings"
FIG_T8 = ("tests/test_figures.py::"
          "test_regression_certified_figure_is_a_step_curve_of_per_sigma_means")
AN_FIG = f"{T_AN}::test_figures_plot_the_right_arms_and_values"
AN_RUNNING = f"{T_AN}::test_running_seed_is_counted_never_averaged"
CKPT_LAST = f"{T_CKPT}::test_regression_last_checkpoint_is_the_last_epoch_and_reproduces_the_record"
CKPT_ROUND = f"{T_CKPT}::test_round_trip_gives_equal_state"
CKPT_DDP = f"{T_CKPT}::test_ddp_wrapper_is_unwrapped_on_save"
ENG_RESUME = f"{T_ENG}::test_exact_resume_after_interrupt"
ENG_WARMUP = f"{T_ENG}::test_warmup_epochs_train_with_one_copy"
ENG_LR = f"{T_ENG}::test_learning_rate_schedule_in_history"
LM_NAIVE = f"{T_LM}::test_maxup_step_matches_the_naive_reference"
T_OPT = "tests/test_optimiser_applied.py"
OPT_SGD = f"{T_OPT}::test_each_step_is_sgd_at_the_scheduled_lr_with_every_configured_option"
OPT_CKPT = f"{T_OPT}::test_checkpointed_optimiser_holds_the_epochs_lr_and_the_configs_options"
OPT_TOPK = f"{T_OPT}::test_loss_top1_and_top5_of_a_fixed_model_counted_by_hand"
T_RAND = "tests/test_epoch_randomness.py"
RAND_IMG = (f"{T_RAND}::"
            "test_image_order_and_augmentation_draws_change_every_epoch_and_repeat_on_rerun")
RAND_LM = f"{T_RAND}::test_lm_window_lengths_and_dropout_draws_change_every_epoch"
RAND_MASK = f"{T_RAND}::test_word_masks_are_independent_across_sequences_and_copies"
T_LOOP = "tests/test_lm_loop.py"
LOOP_LR = f"{T_LOOP}::test_step_lr_is_base_lr_times_drawn_length_over_bptt_and_restored"
LOOP_HIDDEN = f"{T_LOOP}::test_hidden_state_is_carried_between_windows_and_reset_at_each_epoch"
LOOP_ADV_ON = f"{T_LOOP}::test_adv_perturbation_is_trained_when_configured"
LOOP_ASGD = (f"{T_LOOP}::"
             "test_asgd_average_is_the_mean_of_the_iterates_and_is_what_evaluation_keeps")
LOOP_FT = f"{T_LOOP}::test_finetune_stage_restarts_from_the_best_model_and_averages_afresh"
LOOP_TRIGGER = f"{T_LOOP}::test_nonmono_trigger_on_a_stubbed_validation_sequence"
LOOP_SWITCH = f"{T_LOOP}::test_switch_starts_averaging_after_the_configured_epoch"
LOOP_ADV = f"{T_LOOP}::test_maxup_step_with_adv_matches_a_naive_reference_that_scores_with_adv"
T_PW = "tests/test_predict_welch.py"
PW_PVALUE = f"{T_PW}::test_predict_pvalue_is_the_exact_two_sided_binomial_test"
PW_PREDICT = f"{T_PW}::test_predict_tests_the_top_class_against_the_runner_up"
PW_ONE_CLASS = f"{T_PW}::test_predict_with_one_class_tests_n_against_zero"
PW_KNOWN = f"{T_PW}::test_welch_known_answers"
PW_ZERO_VAR = f"{T_PW}::test_welch_with_one_arm_without_variance_is_a_one_sample_t_test"
PW_NAN = f"{T_PW}::test_welch_is_nan_where_undefined"
PW_NONFINITE = f"{T_PW}::test_welch_drops_non_finite_values"
T_PAIR = "tests/test_paired.py"
PAIR_SCIPY = f"{T_PAIR}::test_paired_difference_is_scipys_ttest_rel"
PAIR_COMMON = f"{T_PAIR}::test_paired_difference_pairs_only_the_common_finite_seeds"
PAIR_ZERO_VAR = f"{T_PAIR}::test_paired_difference_without_variance_is_undefined_not_p_zero"
PAIR_WELCH = f"{T_PAIR}::test_welch_difference_is_scipys_ttest_ind"
PAIR_FALLBACK = f"{T_PAIR}::test_one_common_seed_falls_back_to_welch_on_every_seed"
PAIR_CONTROL = f"{T_PAIR}::test_compare_against_reference_and_control_paired_by_seed"


@dataclass(frozen=True)
class Mutant:
    """One single-line mutation.

    Args:
        id: a short name.
        area: which part of the science it breaks (groups the report).
        path: the module, relative to the repository root.
        old: text that occurs exactly once in the module (a part of a line, or whole lines
            with context lines to make it unique); ``new`` differs from it in one line only.
        new: the mutated text.
        tests: pytest node ids run against it, most specific first.
        what: the bug it models, in words.
        equivalent: for a mutant expected to survive, why that is acceptable.
    """

    id: str
    area: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str
    equivalent: str = ""


M = Mutant
OBJ, CERT, IDN, TAB, CKPT, LM = ("objective", "certification", "identity",
                                 "table statistics and cell rule", "checkpointing and resume",
                                 "language-model MaxUp selection")
OPT, RAND, METRIC, LOOP = ("optimiser and schedule as applied", "randomness between epochs",
                           "reported metrics", "language-model training loop")

MUTANTS: list[Mutant] = [
    # ----------------------------------------------------------------- the MaxUp objective
    M("obj-select-best-copy", OBJ, "maxup/objective.py",
      "        worst = losses.argmax(dim=0)\n", "        worst = losses.argmin(dim=0)\n",
      (OBJ_GRAD, OBJ_NAIVE), "efficient mode trains on each example's best copy, not its worst"),
    M("obj-naive-min", OBJ, "maxup/objective.py",
      "            worst_loss, worst = losses.max(dim=0)\n",
      "            worst_loss, worst = losses.min(dim=0)\n",
      (OBJ_NAIVE, OBJ_SOFT), "naive mode minimises the mean of the best copies (min for max)"),
    M("obj-layout-batch-major", OBJ, "maxup/objective.py",
      "        rows = worst * b + torch.arange(b, device=x.device)\n        x_sel, t_sel",
      "        rows = worst + m * torch.arange(b, device=x.device)\n        x_sel, t_sel",
      (OBJ_GRAD, OBJ_NAIVE), "selected rows indexed as batch x copies (the layout is copies x "
      "batch): another example's copy is trained"),
    M("obj-gap-vs-min", OBJ, "maxup/objective.py",
      "        gap = (losses.max(dim=0).values - losses.mean(0)).mean()\n",
      "        gap = (losses.max(dim=0).values - losses.min(dim=0).values).mean()\n",
      (OBJ_GAP, OBJ_NAIVE), "the logged gap is worst minus best copy, not worst minus mean"),
    M("obj-one-draw-m-times", OBJ, "maxup/objective.py",
      "xs, ts = zip(*(self.augmentation(x, y, generator) for _ in range(m)), strict=True)",
      "xs, ts = zip(*([self.augmentation(x, y, generator)] * m), strict=True)",
      (OBJ_GRAD,), "one augmentation draw repeated m times: the max is over identical copies"),
    M("obj-bn-stats-updated", OBJ, "maxup/objective.py",
      "mod.track_running_stats = False\n", "mod.track_running_stats = True\n",
      (OBJ_BN,), "the selection pass updates BatchNorm running statistics m extra times"),
    M("obj-ce-mean-over-classes", OBJ, "maxup/objective.py",
      "    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)\n",
      "    return -(targets * F.log_softmax(logits, dim=-1)).mean(dim=-1)\n",
      (OBJ_GRAD, OBJ_F64), "soft cross-entropy averaged over classes (loss and gradient / K)"),
    M("obj-ce-float32", OBJ, "maxup/objective.py",
      "    logits = logits if logits.dtype == torch.float64 else logits.float()  # upcast, never "
      "down\n",
      "    logits = logits.float()  # upcast, never down\n",
      (OBJ_F64,), "float64 models' losses silently computed in float32"),
    M("obj-m2-as-erm", OBJ, "maxup/objective.py",
      "        if m == 1:\n", "        if m <= 2:\n",
      (OBJ_M, OBJ_M1), "m = 2 trains on a single copy (standard augmentation)"),
    M("obj-chunk-one-copy", OBJ, "maxup/objective.py",
      "        size = xs.shape[0] if self.chunk is None else (xs.shape[0] // m) * self.chunk\n",
      "        size = xs.shape[0] if self.chunk is None else (xs.shape[0] // m)\n",
      (OBJ_BN,), "selection forwards ignore `chunk`: BatchNorm batch statistics over other "
      "batches than documented"),
    M("obj-warmup-off-by-one", OBJ, "maxup/schedule.py",
      "    return m if epoch >= warmup_epochs and m > 1 else 1\n",
      "    return m if epoch > warmup_epochs and m > 1 else 1\n",
      (ENG_WARMUP,), "one warm-up epoch more than configured"),
    # ----------------------------------------------------------------- certification
    M("certify-class-from-estimation", CERT, "maxup/certify.py",
      "    counts = sample_noise_counts(model, x, n, sigma, num_classes, batch, generator)\n"
      "    p_lower",
      "    counts = sample_noise_counts(model, x, n, sigma, num_classes, batch, generator)"
      "; c_a = int(counts.argmax())\n    p_lower",
      (CERT_SEL, CERT_SPY), "CERTIFY takes c_A from the estimation sample, not its n0 selection "
      "sample (issue 16; voids the guarantee's independence)"),
    M("certify-reuse-selection-counts", CERT, "maxup/certify.py",
      "    counts = sample_noise_counts(model, x, n, sigma, num_classes, batch, generator)\n"
      "    p_lower",
      "    counts = counts0\n    p_lower",
      (CERT_CONST, CERT_SEL, CERT_SPY), "n_A counted in the n0 selection sample, not in n fresh "
      "samples"),
    M("certify-selection-n", CERT, "maxup/certify.py",
      "    counts0 = sample_noise_counts(model, x, n0, sigma, num_classes, batch, generator)\n",
      "    counts0 = sample_noise_counts(model, x, n, sigma, num_classes, batch, generator)\n",
      (CERT_SPY, CERT_SEL), "selection draws n samples instead of n0"),
    M("certify-abstain-0.6", CERT, "maxup/certify.py",
      "    if p_lower < 0.5:\n", "    if p_lower < 0.6:\n",
      (CERT_LIN,), "abstains unless p_A_lower >= 0.6 (loses every radius below 0.25 sigma)"),
    M("certify-abstain-le", CERT, "maxup/certify.py",
      "    if p_lower < 0.5:\n", "    if p_lower <= 0.5:\n",
      (CERT_LIN, CERT_BOUNDARY), "abstains also at p_A_lower == 0.5 exactly",
      equivalent="equivalent in floating point: the two differ only when the Clopper-Pearson "
      "bound beta.ppf(alpha, n_A, n - n_A + 1) is exactly 0.5 (then the radius is "
      "sigma * Phi^-1(0.5) = 0 and only the r = 0 column could change); no test can reach "
      "that value, and Cohen et al.'s rule (abstain when p_A_lower < 0.5) is the one kept."),
    M("certify-cp-upper-shape", CERT, "maxup/certify.py",
      "    return float(beta.ppf(alpha, n_a, n - n_a + 1))\n",
      "    return float(beta.ppf(alpha, n_a + 1, n - n_a))\n",
      (CERT_KNOWN, CERT_EDGE), "Clopper-Pearson bound with the upper bound's beta parameters"),
    M("certify-two-sided-alpha", CERT, "maxup/certify.py",
      "    return float(beta.ppf(alpha, n_a, n - n_a + 1))\n",
      "    return float(beta.ppf(2 * alpha, n_a, n - n_a + 1))\n",
      (CERT_RATE, CERT_KNOWN), "lower bound at level 2 alpha (a two-sided/one-sided mix-up): "
      "twice the failure probability the certificate promises"),
    M("certify-radius-no-sigma", CERT, "maxup/certify.py",
      "    return float(sigma * norm.ppf(p_lower))\n", "    return float(norm.ppf(p_lower))\n",
      (CERT_KNOWN, CERT_LIN), "radius without the sigma factor"),
    M("certify-noise-unscaled", CERT, "maxup/certify.py",
      "                noisy = noise.mul_(sigma).add_(x)  # x + sigma * N(0, I), in place\n",
      "                noisy = noise.add_(x)  # x + sigma * N(0, I), in place\n",
      (CERT_LIN, CERT_RATE), "noise drawn at sigma = 1 whatever sigma is"),
    M("certify-argmin-votes", CERT, "maxup/certify.py",
      "preds = logits.argmax(dim=1)\n", "preds = logits.argmin(dim=1)\n",
      (CERT_COUNTS, CERT_CONST), "the base classifier's vote is its least likely class"),
    M("certify-full-batches", CERT, "maxup/certify.py",
      "                b = min(batch, remaining)\n", "                b = batch\n",
      (CERT_COUNTS, CERT_SEL), "the last chunk draws a full batch: more samples than n counted "
      "against n"),
    M("certify-train-mode", CERT, "maxup/certify.py",
      "    model.eval()\n    try:\n", "    pass\n    try:\n",
      (CERT_COUNTS,), "sampling with the model in training mode (BatchNorm batch statistics, "
      "dropout)"),
    M("certify-seed-ignores-image", CERT, "maxup/certify.py",
      "    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, "
      "dtype=np.uint32)\n",
      "    state = np.random.SeedSequence([int(seed), 0]).generate_state(2, dtype=np.uint32)\n",
      (CERT_SEED, CERT_SHARDS), "every image draws the same noise"),
    M("predict-pvalue-flipped", CERT, "maxup/certify.py",
      "    if predict_pvalue(n_a, n_b) > alpha:\n", "    if predict_pvalue(n_a, n_b) < alpha:\n",
      (CERT_PRED, CERT_BOUNDARY), "PREDICT abstains when confident and answers when not"),
    M("certified-accuracy-strict", CERT, "maxup/records.py",
      "sum(1 for row in rows if row[\"correct\"] and row[\"radius\"] >= r) / total\n",
      "sum(1 for row in rows if row[\"correct\"] and row[\"radius\"] > r) / total\n",
      (CERT_ACC, CERT_CLI), "certified accuracy counts radius > r instead of radius >= r"),
    M("certify-dataset-no-skip", CERT, "maxup/certify.py",
      "    indices = range(int(start), end, int(skip))\n", "    indices = range(int(start), end)\n",
      (CERT_SHARDS, CERT_CLI), "every image certified whatever skip says"),
    M("certify-correct-if-certified", CERT, "maxup/certify.py",
      "\"correct\": bool(pred == label),\n", "\"correct\": bool(rad > 0),\n",
      (CERT_CLI,), "a row counts as correct whenever it is certified, whatever its class"),
    # ----------------------------------------------------------------- identity
    M("id-checkpoint-every-in-identity", IDN, "maxup/identity.py",
      "    \"train.checkpoint_every\",\n", "\n",
      (ID_LOCAL,), "changing the checkpoint frequency makes a new trial (retrains, splits arms)"),
    M("id-arm-keeps-seed", IDN, "maxup/identity.py",
      "    return _digest(_drop(identity_config(config), (SEED_KEY,)))\n",
      "    return _digest(identity_config(config))\n",
      (ID_SEED, ID_RULE), "the arm id includes the seed: every seed its own arm, n = 1 cells"),
    M("id-unsorted-json", IDN, "maxup/identity.py",
      "    canon = json.dumps(obj, sort_keys=True, separators=(\",\", \":\"))\n",
      "    canon = json.dumps(obj, sort_keys=False, separators=(\",\", \":\"))\n",
      (ID_RULE,), "ids depend on key order: the same config can hash two ways"),
    M("id-certify-prefix", IDN, "maxup/identity.py",
      "    return key not in NON_IDENTITY_KEYS and key.split(\".\", 1)[0] != CERTIFY_SECTION\n",
      "    return key not in NON_IDENTITY_KEYS\n",
      (ID_LOCAL,), "certify.* keys count as identity keys (resume refused, arms split)"),
    M("id-counterpart-is-self", IDN, "maxup/identity.py",
      "    return arm_id(out)\n", "    return arm_id(config)\n",
      (AN_BASE, AN_AGG), "an arm's baseline is itself: Δ = 0 everywhere"),
    M("id-differences-all-keys", IDN, "maxup/identity.py",
      "        elif va != vb and is_identity_key(name):\n", "        elif va != vb:\n",
      (ID_LOCAL,), "resume refused after changing the device or the data root"),
    M("id-certification-without-settings", IDN, "maxup/identity.py",
      "    return _digest({\"trial\": trial_id(config), CERTIFY_SECTION: "
      "config.get(CERTIFY_SECTION)})\n",
      "    return _digest({\"trial\": trial_id(config)})\n",
      (ID_CERT,), "another certification of the same model counted as the same one"),
    # ----------------------------------------------------------------- table statistics
    M("stats-std-ddof0", TAB, "maxup/analysis/stats.py",
      "    std = float(arr.std(ddof=1)) if n > 1 else math.nan\n",
      "    std = float(arr.std(ddof=0)) if n > 1 else math.nan\n",
      (AN_AGG,), "population std instead of the sample std over seeds"),
    M("stats-t-dof-n", TAB, "maxup/analysis/stats.py",
      "    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)\n",
      "    half = float(sps.t.ppf(0.5 + confidence / 2, n)) * std / math.sqrt(n)\n",
      (AN_AGG,), "t interval with n degrees of freedom instead of n - 1"),
    M("stats-one-sided-ci", TAB, "maxup/analysis/stats.py",
      "    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)\n",
      "    half = float(sps.t.ppf(confidence, n - 1)) * std / math.sqrt(n)\n",
      (AN_AGG,), "a one-sided 95% quantile for a two-sided interval (too narrow)"),
    M("stats-pooled-t", TAB, "maxup/analysis/stats.py",
      "    return float(sps.ttest_ind(a, b, equal_var=False).pvalue)\n",
      "    return float(sps.ttest_ind(a, b, equal_var=True).pvalue)\n",
      (PW_KNOWN,), "Student's pooled t-test instead of Welch's"),
    M("welch-pooled-dof", TAB, "maxup/analysis/stats.py",
      "    dof = float((va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)))\n",
      "    dof = float(a.size + b.size - 2)\n",
      (AN_AGG, PAIR_WELCH), "Welch's test of the tables with the pooled test's degrees of "
      "freedom"),
    M("paired-dof-n", TAB, "maxup/analysis/stats.py",
      "    dof = float(d.size - 1)\n", "    dof = float(d.size)\n",
      (PAIR_SCIPY,), "the paired t-test with n instead of n - 1 degrees of freedom"),
    M("paired-keeps-one-sided-seeds", TAB, "maxup/analysis/stats.py",
      "    common = sorted((s for s in a if s in b and math.isfinite(a[s]) and "
      "math.isfinite(b[s])),\n",
      "    common = sorted((s for s in a if s in b and math.isfinite(a[s])),\n",
      (PAIR_COMMON,), "a seed whose baseline value is NaN enters the pairs"),
    M("paired-zero-variance-p0", TAB, "maxup/analysis/stats.py",
      "    if sd == 0:\n", "    if sd < 0:\n",
      (PAIR_ZERO_VAR,), "differences without variance give an infinite t (p = 0), not "
      "'no test possible'"),
    M("paired-with-one-seed", TAB, "maxup/analysis/stats.py",
      "MIN_PAIRS = 2\n", "MIN_PAIRS = 1\n",
      (PAIR_FALLBACK,), "one common seed is 'paired' (no test) instead of Welch on all seeds"),
    M("control-is-the-reference", TAB, "maxup/analysis/arms.py",
      "CONTROL = Baseline(\"maxup.m\", 1, ((\"lm.mask_per_sequence\", True),),\n",
      "CONTROL = Baseline(\"maxup.m\", 1, ((\"lm.mask_per_sequence\", False),),\n",
      (PAIR_CONTROL,), "the per-sequence control looked up as the reference step (issue 29)"),
    M("stats-double-count", TAB, "maxup/analysis/stats.py",
      "    done = unique_trials(completed(df))\n    keys = list(arm_columns(done) if by is None "
      "else by)\n    rows = []\n",
      "    done = completed(df)\n    keys = list(arm_columns(done) if by is None "
      "else by)\n    rows = []\n",
      (AN_SHARED,), "a trial two sweeps planned counted twice in aggregate()"),
    M("arms-running-in-mean", TAB, "maxup/analysis/arms.py",
      "    done = rows[status == Status.COMPLETED]\n", "    done = rows[status != Status.FAILED]\n",
      (AN_RUNNING, AN_NAN), "interim (running) records enter the mean"),
    M("arms-nan-not-diverged", TAB, "maxup/analysis/arms.py",
      "                    n_diverged=diverged_fail + int(len(done) - finite.size),\n",
      "                    n_diverged=diverged_fail,\n",
      (AN_NAN,), "a completed seed with a NaN metric silently dropped from the counts"),
    M("welch-delta-sign", TAB, "maxup/analysis/stats.py",
      "    diff = float(a.mean() - b.mean()) if a.size and b.size else math.nan\n",
      "    diff = float(b.mean() - a.mean()) if a.size and b.size else math.nan\n",
      (AN_AGG,), "Δ vs baseline (Welch) with the wrong sign"),
    M("paired-delta-sign", TAB, "maxup/analysis/stats.py",
      "    d = np.asarray([float(a[s]) - float(b[s]) for s in common], dtype=float)\n",
      "    d = np.asarray([float(b[s]) - float(a[s]) for s in common], dtype=float)\n",
      (AN_BASE, PAIR_SCIPY), "Δ vs baseline (paired) with the wrong sign"),
    M("cell-shows-worst-arm", TAB, "maxup/analysis/tables.py",
      "    arms = arms_of(csub, metric, spec.scale)\n    if not arms:\n",
      "    arms = sorted(arms_of(csub, metric, spec.scale), key=lambda a: a.mean)[:1]\n"
      "    if not arms:\n",
      (AN_RULE, AN_ARMS), "a cell with several arms shows only the worst (issue 16)"),
    M("cell-shows-best-arm", TAB, "maxup/analysis/tables.py",
      "    arms = arms_of(csub, metric, spec.scale)\n    if not arms:\n",
      "    arms = sorted(arms_of(csub, metric, spec.scale), key=lambda a: -a.mean)[:1]\n"
      "    if not arms:\n",
      (AN_RULE, AN_ARMS), "a cell with several arms shows only the best (the rule it replaced)"),
    M("cell-arms-sorted-by-result", TAB, "maxup/analysis/tables.py",
      "    arms = arms_of(csub, metric, spec.scale)\n    if not arms:\n",
      "    arms = sorted(arms_of(csub, metric, spec.scale), key=lambda a: -a.mean)\n"
      "    if not arms:\n",
      (AN_RULE,), "every arm shown, but ordered best first (chosen by result)"),
    M("cell-two-arms-one", TAB, "maxup/analysis/tables.py",
      "    if len(arms) > 1:\n        cols = arm_columns(unique_trials(csub))\n",
      "    if len(arms) > 2:\n        cols = arm_columns(unique_trials(csub))\n",
      (AN_ARMS, AN_RULE), "a cell with exactly two arms shows the first only"),
    M("best-ranks-multi-arm-cells", TAB, "maxup/analysis/tables.py",
      "                 if not self.cell(i, col).missing and not self.cell(i, col).arms}\n",
      "                 if not self.cell(i, col).missing}\n",
      (AN_RULE,), "cells holding several arms take part in bolding the column's best"),
    M("best-wrong-end", TAB, "maxup/analysis/tables.py",
      "        target = (min if c.lower_is_better else max)(x.mean for x in cells.values())\n",
      "        target = (max if c.lower_is_better else min)(x.mean for x in cells.values())\n",
      (AN_BOLD,), "the worst cell of each column is bolded"),
    M("bold-without-significance", TAB, "maxup/analysis/tables.py",
      "        return d.p_value < BOLD_ALPHA\n", "        return d.p_value < 1.0\n",
      (AN_BOLD_SIG, AN_T8_SIGMA), "the best mean is bolded whatever chance explains"),
    M("bold-ties", TAB, "maxup/analysis/tables.py",
      "    if not math.isfinite(d.diff) or d.diff == 0 or (d.diff < 0) != lower_is_better:\n",
      "    if not math.isfinite(d.diff) or (d.diff < 0) != lower_is_better:\n",
      (AN_T8_SIGMA,), "equal observations (Table 8's 0.0 ties) count as a win",
      equivalent="best() refuses a tie before any test; the check guards significantly_"
                 "better for other callers"),
    M("min-seeds-4", TAB, "maxup/analysis/arms.py",
      "MIN_SEEDS = 5\n", "MIN_SEEDS = 4\n",
      (AN_RULE, AN_CI5), "cells with 4 seeds go unmarked (the paper reports 5)"),
    M("inside-ci-any-n", TAB, "maxup/analysis/tables.py",
      "if self.published is None or self.n < MIN_SEEDS or not math.isfinite(self.ci_low):\n",
      "if self.published is None or not math.isfinite(self.ci_low):\n",
      (AN_CI5,), "'in 95% CI' claimed from 2 seeds"),
    M("envelope-best-seed", TAB, "maxup/analysis/certified.py",
      "        if vals and (mean := float(np.mean(list(vals.values())))) > best_mean:\n",
      "        if vals and (mean := float(np.max(list(vals.values())))) > best_mean:\n",
      (AN_T8, AN_T8_SIGMA), "Table 8 ranks settings by their luckiest seed, not their mean"),
    M("envelope-pools-sigma", TAB, "maxup/analysis/certified.py",
      "        setting = out.setdefault((arm, sigma, protocol), Setting(arm, sigma, cfg))\n",
      "        setting = out.setdefault((arm, protocol), Setting(arm, sigma, cfg))\n",
      (AN_T8_TWO, AN_T8_SIGMA, FIG_T8),
      "seeds of one arm certified at different σ averaged into one setting"),
    M("figure-envelope-min", TAB, "maxup/analysis/certified.py",
      "    return grid, np.max([s.curve(grid) for s in found], axis=0)\n",
      "    return grid, np.min([s.curve(grid) for s in found], axis=0)\n",
      (AN_FIG, FIG_T8), "the certified-accuracy figure plots the worst setting per method"),
    M("figure-ci-sqrt-n-1", TAB, "maxup/analysis/figures.py",
      "        half = t * std / np.sqrt(n)\n", "        half = t * std / np.sqrt(n - 1)\n",
      (AN_FIG,), "error bars of the accuracy-vs-m figure too wide"),
    # ----------------------------------------------------------------- checkpoint / resume
    M("ckpt-no-final-checkpoint", CKPT, "maxup/engine/loop.py",
      "            checkpoint_now = done % cfg.train.checkpoint_every == 0 or done == "
      "cfg.train.epochs\n",
      "            checkpoint_now = done % cfg.train.checkpoint_every == 0\n",
      (CKPT_LAST,), "no final checkpoint when epochs % checkpoint_every != 0: an earlier "
      "epoch's model certified (issue 16)"),
    M("ckpt-epoch-off-by-one", CKPT, "maxup/checkpoint.py",
      "        \"epoch\": epoch,\n", "        \"epoch\": epoch - 1,\n",
      (CKPT_ROUND, CKPT_LAST), "the checkpoint records one epoch fewer than it holds"),
    M("ckpt-ddp-prefix", CKPT, "maxup/checkpoint.py",
      "        \"model\": getattr(model, \"module\", model).state_dict(),\n",
      "        \"model\": model.state_dict(),\n",
      (CKPT_DDP,), "data-parallel checkpoints keep the module. prefix"),
    M("resume-weights-not-loaded", CKPT, "maxup/engine/loop.py",
      "        _unwrap(model).load_state_dict(state[\"model\"])\n", "        pass\n",
      (ENG_RESUME,), "resume continues from freshly initialised weights"),
    M("resume-optimizer-not-loaded", CKPT, "maxup/engine/loop.py",
      "        task.optimizer.load_state_dict(state[\"optimizer\"])\n", "        pass\n",
      (ENG_RESUME,), "resume drops the momentum buffers"),
    M("resume-epoch-off-by-one", CKPT, "maxup/engine/loop.py",
      "        start_epoch, history = state[\"epoch\"], list(state[\"history\"])\n",
      "        start_epoch, history = state[\"epoch\"] - 1, list(state[\"history\"])\n",
      (ENG_RESUME,), "resume repeats the checkpoint's last epoch"),
    M("lr-milestone-late", CKPT, "maxup/schedule.py",
      "    return o.lr * o.gamma ** sum(epoch >= m for m in o.milestones)\n",
      "    return o.lr * o.gamma ** sum(epoch > m for m in o.milestones)\n",
      (ENG_LR,), "the step schedule decays one epoch late (also after a resume)"),
    # ----------------------------------------------------------------- LM MaxUp selection
    M("lm-select-best-mask", LM, "maxup/lm/objective.py",
      "    chosen = losses.argmax(0)\n", "    chosen = losses.argmin(0)\n",
      (LM_NAIVE,), "each sentence trains on its easiest word-dropout mask"),
    M("lm-copy-layout", LM, "maxup/lm/objective.py",
      "        stacked_scale = scales[k0:k0 + c].permute(1, 0, 2).reshape(t, c * b)\n",
      "        stacked_scale = scales[k0:k0 + c].permute(1, 2, 0).reshape(t, c * b)\n",
      (LM_NAIVE,), "copies stacked sequence-major while scored copy-major: masks scored "
      "against the wrong sentences"),
    M("lm-adv-not-in-score", LM, "maxup/lm/objective.py",
      "    losses = copy_losses(model, words, targets, hidden, noise, scales,\n"
      "                         adversarial=adversarial, chunk=chunk)\n",
      "    losses = copy_losses(model, words, targets, hidden, noise, scales,\n"
      "                         adversarial=False, chunk=chunk)\n",
      (LOOP_ADV,), "with ADV on, copies are scored without the perturbation the training loss "
      "applies: the selected mask is not the worst for the trained objective"),
    M("lm-adv-not-in-trained-loss", LM, "maxup/lm/objective.py",
      "    loss, raw = _regularised(model, out, raw_last, targets, alpha=alpha, beta=beta,\n"
      "                             adversarial=adversarial)\n    t = words.shape[0]\n",
      "    loss, raw = _regularised(model, out, raw_last, targets, alpha=alpha, beta=beta,\n"
      "                             adversarial=False)\n    t = words.shape[0]\n",
      (LOOP_ADV,), "MaxUp with ADV on trains the selected copy without the perturbation"),
    M("lm-word-mask-shared-by-sequences", LM, "maxup/models/awd_lstm.py",
      "    table = _bernoulli_scale((m, b, uniq.numel()), p, generator, words.device)\n",
      "    table = _bernoulli_scale((m, 1, uniq.numel()), p, generator, words.device)"
      ".expand(m, b, -1)\n",
      (RAND_MASK,), "one word-dropout mask per copy shared by every sequence of the batch "
      "(the paper's masks are per sentence)"),
    M("lm-word-mask-shared-by-copies", LM, "maxup/models/awd_lstm.py",
      "    table = _bernoulli_scale((m, b, uniq.numel()), p, generator, words.device)\n",
      "    table = _bernoulli_scale((1, b, uniq.numel()), p, generator, words.device)"
      ".expand(m, b, -1)\n",
      (RAND_MASK,), "the m copies of a sentence share one mask: the max is over identical "
      "copies"),
    # ----------------------------------------------------------------- LM training loop
    M("lm-lr-not-scaled", LOOP, "maxup/lm/task.py",
      "                group[\"lr\"] = lr * seq_len / lm.bptt\n",
      "                group[\"lr\"] = lr\n",
      (LOOP_LR,), "every window steps at the base lr whatever its drawn length"),
    M("lm-lr-scaled-inverse", LOOP, "maxup/lm/task.py",
      "                group[\"lr\"] = lr * seq_len / lm.bptt\n",
      "                group[\"lr\"] = lr * lm.bptt / seq_len\n",
      (LOOP_LR,), "the lr scaling inverted: short windows take the largest steps"),
    M("lm-weight-decay-dropped", LOOP, "maxup/lm/task.py",
      "                                         weight_decay=cfg.optim.weight_decay)\n",
      "                                         )\n",
      (LOOP_LR,), "optim.weight_decay silently not passed to the LM's SGD"),
    M("lm-hidden-reset-each-window", LOOP, "maxup/lm/task.py",
      "            hidden = step.hidden\n",
      "            hidden = model.init_hidden(data.shape[1])\n",
      (LOOP_HIDDEN,), "the hidden state is not carried: every window starts from zeros"),
    M("lm-adv-off-in-training", LOOP, "maxup/lm/task.py",
      "beta=lm.beta, adversarial=lm.adv_eps > 0, chunk=cfg.maxup.chunk,",
      "beta=lm.beta, adversarial=False, chunk=cfg.maxup.chunk,",
      (LOOP_ADV_ON,), "lm.adv_eps configured but ADV's perturbation never trained"),
    M("lm-asgd-mean-off-by-one", LOOP, "maxup/lm/task.py",
      "            a.add_(p - a, alpha=1.0 / n)\n",
      "            a.add_(p - a, alpha=1.0 / (n + 1))\n",
      (LOOP_ASGD, LOOP_FT), "the running average weighs iterates unequally (not the mean)"),
    M("lm-eval-raw-weights", LOOP, "maxup/lm/task.py",
      "                            p.copy_(a)\n", "                            pass\n",
      (LOOP_ASGD,), "validation, test and the kept best model use the raw iterate, not the "
      "average"),
    M("lm-train-from-average", LOOP, "maxup/lm/task.py",
      "                            p.copy_(s)\n", "                            pass\n",
      (LOOP_ASGD,), "after evaluation training continues from the averaged weights"),
    M("lm-finetune-not-from-best", LOOP, "maxup/lm/task.py",
      "            model.load_state_dict(self.state[\"best_model\"])\n"
      "        self.state.update(stage=",
      "            pass\n        self.state.update(stage=",
      (LOOP_FT,), "a fine-tuning stage continues from the last weights, not the best model"),
    M("lm-finetune-no-averaging", LOOP, "maxup/lm/task.py",
      "self.state.update(stage=stage, averaging=True, avg=None, avg_count=0, val_history=[])",
      "self.state.update(stage=stage, averaging=False, avg=None, avg_count=0, val_history=[])",
      (LOOP_FT,), "a fine-tuning stage trains without averaging (finetune.py uses ASGD from "
      "its first step)"),
    M("lm-finetune-keeps-average", LOOP, "maxup/lm/task.py",
      "self.state.update(stage=stage, averaging=True, avg=None, avg_count=0, val_history=[])",
      "self.state.update(stage=stage, averaging=True, val_history=[])",
      (LOOP_FT,), "a fine-tuning stage extends the main stage's average instead of restarting "
      "it"),
    M("lm-trigger-monotone", LOOP, "maxup/lm/task.py",
      "                       and val_loss > min(hist[: -lm.nonmono]))\n",
      "                       and val_loss > hist[-1])\n",
      (LOOP_TRIGGER,), "NT-ASGD's trigger compares with the last epoch only (monotone)"),
    M("lm-trigger-recent-window", LOOP, "maxup/lm/task.py",
      "                       and val_loss > min(hist[: -lm.nonmono]))\n",
      "                       and val_loss > min(hist[-lm.nonmono:]))\n",
      (LOOP_TRIGGER,), "the trigger's minimum over the last n epochs instead of all but them"),
    M("lm-trigger-ties", LOOP, "maxup/lm/task.py",
      "                       and val_loss > min(hist[: -lm.nonmono]))\n",
      "                       and val_loss >= min(hist[: -lm.nonmono]))\n",
      (LOOP_TRIGGER,), "a validation loss equal to the old best counts as worse"),
    M("lm-switch-off-by-one", LOOP, "maxup/lm/task.py",
      "and epoch + 1 >= lm.switch:", "and epoch >= lm.switch:",
      (LOOP_SWITCH,), "asgd: switch starts averaging one epoch late"),
    M("lm-lengths-same-every-epoch", RAND, "maxup/lm/task.py",
      "derive_seed(cfg.seed, epoch, \"bptt\")", "derive_seed(cfg.seed, 0, \"bptt\")",
      (RAND_LM,), "every epoch cuts the stream into the same variable-length windows"),
    M("lm-dropout-same-every-epoch", RAND, "maxup/lm/task.py",
      "        epoch_seed = derive_seed(cfg.seed, epoch, dist.rank)\n",
      "        epoch_seed = derive_seed(cfg.seed, 0, dist.rank)\n",
      (RAND_LM,), "every epoch draws the same dropout and word masks"),
    # ----------------------------------------------------------------- optimiser, schedule
    M("opt-schedule-not-applied", OPT, "maxup/engine/image.py",
      "        group[\"lr\"] = lr\n", "        pass\n",
      (OPT_SGD, OPT_CKPT), "the schedule's lr is computed and written to the history but never "
      "reaches the optimiser"),
    M("opt-nesterov-dropped", OPT, "maxup/engine/image.py",
      "nesterov=cfg.optim.nesterov,", "nesterov=False,",
      (OPT_SGD, OPT_CKPT), "optim.nesterov silently not passed to SGD"),
    M("opt-momentum-default", OPT, "maxup/engine/image.py",
      "momentum=cfg.optim.momentum,", "momentum=0.9,",
      (OPT_SGD, OPT_CKPT), "optim.momentum ignored: SGD always at the usual 0.9"),
    M("opt-weight-decay-default", OPT, "maxup/engine/image.py",
      "weight_decay=cfg.optim.weight_decay)", "weight_decay=5e-4)",
      (OPT_SGD, OPT_CKPT), "optim.weight_decay ignored: SGD always at the default 5e-4"),
    M("lr-cosine-one-epoch-ahead", OPT, "maxup/schedule.py",
      "math.cos(math.pi * epoch / cfg.train.epochs)",
      "math.cos(math.pi * (epoch + 1) / cfg.train.epochs)",
      (OPT_CKPT,), "the cosine schedule one epoch ahead (the first epoch never at the base "
      "lr, the last at 0)"),
    # ----------------------------------------------------------------- randomness per epoch
    M("rand-order-same-every-epoch", RAND, "maxup/engine/image.py",
      "seed=derive_seed(cfg.seed, epoch, \"order\")", "seed=derive_seed(cfg.seed, 0, \"order\")",
      (RAND_IMG,), "every epoch visits the training images in the same order"),
    M("rand-order-unshuffled", RAND, "maxup/engine/batches.py",
      "        perm = torch.randperm(n, generator=g)\n", "        perm = torch.arange(n)\n",
      (RAND_IMG,), "the training images are never shuffled"),
    M("rand-augment-same-every-epoch", RAND, "maxup/engine/image.py",
      "manual_seed(derive_seed(epoch_seed, \"augment\"))",
      "manual_seed(derive_seed(cfg.seed, \"augment\"))",
      (RAND_IMG,), "every epoch replays the same augmentation draws"),
    # ----------------------------------------------------------------- reported metrics
    M("top5-is-top3", METRIC, "maxup/engine/image.py",
      "    k = min(5, num_classes)\n", "    k = min(3, num_classes)\n",
      (OPT_TOPK,), "the reported top-5 accuracy counts the top 3 classes"),
    M("topk-smallest-logits", METRIC, "maxup/engine/image.py",
      "logits.topk(k, dim=1)", "logits.topk(k, dim=1, largest=False)",
      (OPT_TOPK,), "top-k taken over the smallest logits"),
    M("eval-loss-batch-means-summed", METRIC, "maxup/engine/image.py",
      "F.cross_entropy(logits, y, reduction=\"sum\")",
      "F.cross_entropy(logits, y, reduction=\"mean\")",
      (OPT_TOPK,), "the test loss sums per-batch means and divides by the image count"),
    # ----------------------------------------------------------------- PREDICT and Welch
    M("predict-runner-up-is-rest", CERT, "maxup/certify.py",
      "    n_b = int(counts[order[1]]) if num_classes > 1 else 0\n",
      "    n_b = int(n) - n_a if num_classes > 1 else 0\n",
      (PW_PREDICT,), "PREDICT tests the top class against all others, not the runner-up "
      "(abstains far more often than Cohen et al.)"),
    M("predict-runner-up-least", CERT, "maxup/certify.py",
      "    n_b = int(counts[order[1]]) if num_classes > 1 else 0\n",
      "    n_b = int(counts[order[-1]]) if num_classes > 1 else 0\n",
      (PW_PREDICT,), "PREDICT tests the top class against the least voted class"),
    M("predict-pvalue-one-sided", CERT, "maxup/certify.py",
      "    return float(binomtest(n_a, n_a + n_b, 0.5).pvalue)\n",
      "    return float(binomtest(n_a, n_a + n_b, 0.5, alternative=\"greater\").pvalue)\n",
      (PW_PVALUE, PW_ONE_CLASS), "a one-sided binomial test: PREDICT answers at twice its "
      "error level"),
    M("welch-nan-if-one-arm-constant", TAB, "maxup/analysis/stats.py",
      "    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:\n",
      "    if a.var(ddof=1) == 0 or b.var(ddof=1) == 0:\n",
      (PW_ZERO_VAR,), "no p-value whenever one arm has no spread (e.g. a baseline whose "
      "seeds agree)"),
    M("welch-keeps-non-finite", TAB, "maxup/analysis/stats.py",
      "    a, b = a[np.isfinite(a)], b[np.isfinite(b)]\n",
      "    a, b = a, b\n",
      (PW_NONFINITE,), "a diverged (NaN) seed turns the arm's p-value into NaN"),
]


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed | survived | stale
    line: int = 0
    killed_by: str = ""
    detail: str = ""
    seconds: float = 0.0
    tests_run: list[str] = field(default_factory=list)


def _run(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(cwd), PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return -1, out
    return proc.returncode, proc.stdout + proc.stderr


def _pytest(tests: list[str], *, first_failure: bool) -> list[str]:
    cmd = [str(PYTHON), "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-rfE",
           "--no-header", *(["-x"] if first_failure else []), *tests]
    return cmd


def snapshot(source: str, dest: Path) -> None:
    """Copy the repository into ``dest``: ``HEAD`` (git archive) or the working tree."""
    dest.mkdir(parents=True, exist_ok=True)
    if source == "head":
        data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"],
                              check=True, capture_output=True).stdout
        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.seek(0)
            with tarfile.open(fileobj=f) as tar:
                tar.extractall(dest, filter="data")
        return
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard",
                            "-z"], check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def check(mutant: Mutant, copy: Path) -> tuple[int, str]:
    """(line number of the changed line, problem or ``""``)."""
    path = copy / mutant.path
    if not path.is_file():
        return 0, f"{mutant.path} does not exist"
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        return 0, f"the mutant's text occurs {count} times in {mutant.path} (expected once)"
    old_lines, new_lines = mutant.old.split("\n"), mutant.new.split("\n")
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b]
    if len(old_lines) != len(new_lines) or len(changed) != 1:
        return 0, "not a single-line change"
    start = text[:text.index(mutant.old)].count("\n")
    return start + changed[0] + 1, ""


def run_mutant(mutant: Mutant, copy: Path, timeout: float) -> Result:
    line, problem = check(mutant, copy)
    if problem:
        return Result(mutant, "stale", detail=problem)
    path = copy / mutant.path
    original = path.read_text()
    t0 = time.perf_counter()
    try:
        path.write_text(original.replace(mutant.old, mutant.new, 1))
        rc, out = _run(_pytest(list(mutant.tests), first_failure=True), copy, timeout)
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - t0
    if rc == 0:
        return Result(mutant, "survived", line, seconds=seconds)
    if rc == -1:
        return Result(mutant, "killed", line, killed_by="(timeout)",
                      detail=f"ran past {timeout:.0f} s", seconds=seconds)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)
    killer = failed[0] if failed else f"(pytest exit {rc})"
    detail = "" if failed else out.strip().splitlines()[-1] if out.strip() else ""
    return Result(mutant, "killed", line, killed_by=killer, detail=detail, seconds=seconds)


def _code(text: str) -> str:
    text = text.strip().replace("|", "\\|")
    return f"`{text}`" if "`" not in text else f"``{text}``"


def _changed_lines(m: Mutant) -> tuple[str, str]:
    for a, b in zip(m.old.split("\n"), m.new.split("\n")):
        if a != b:
            return a, b
    return "", ""


def write_doc(results: list[Result], *, source: str, commit: str, seconds: float,
              path: Path) -> None:
    killed = [r for r in results if r.status == "killed"]
    survived = [r for r in results if r.status == "survived"]
    explained = [r for r in survived if r.mutant.equivalent]
    stale = [r for r in results if r.status == "stale"]
    lines = [
        "# Mutation testing",
        "",
        "Generated by `scripts/mutation.sh` (`benchmarks/mutation.py`); do not edit by hand.",
        "Each mutant is a hand-written single-line change to a module where a silent bug",
        "would change a published number; it is run in a scratch copy of the repository",
        "against the fast tests listed for it (`pytest -x`), and is *killed* when one fails.",
        "Rerun it when the objective, certification, identity, table, checkpoint, optimiser,",
        "schedule, data-order, evaluation or LM code changes; it is not part of CI's pass/fail.",
        "",
        f"- source: {'`HEAD` ' + commit if source == 'head' else 'working tree at ' + commit}",
        f"- date: {datetime.date.today().isoformat()}; wall time {seconds / 60:.1f} min on "
        f"{os.cpu_count()} CPU cores",
        f"- **{len(results)} mutants: {len(killed)} killed, {len(survived)} survived "
        f"({len(explained)} equivalent, explained below; "
        f"{len(survived) - len(explained)} unexplained), {len(stale)} stale**",
        "",
    ]
    areas = list(dict.fromkeys(r.mutant.area for r in results))
    for area in areas:
        lines += [f"## {area[0].upper() + area[1:]}", "",
                  "| mutant | where | change | bug it models | result | killed by |",
                  "|---|---|---|---|---|---|"]
        for r in (r for r in results if r.mutant.area == area):
            a, b = _changed_lines(r.mutant)
            where = f"`{r.mutant.path}:{r.line}`" if r.line else f"`{r.mutant.path}`"
            change = f"{_code(a)} → {_code(b)}" if b.strip() else f"{_code(a)} → (deleted)"
            killer = (f"`{r.killed_by.removeprefix('tests/')}`" if r.status == "killed"
                      else "—")
            result = {"killed": "killed", "survived": "**survived**",
                      "stale": "**stale**"}[r.status]
            lines.append(f"| `{r.mutant.id}` | {where} | {change} | {r.mutant.what} | "
                         f"{result} | {killer} |")
        lines.append("")
    lines += ["## Survivors", ""]
    if not survived:
        lines += ["None.", ""]
    for r in survived:
        reason = r.mutant.equivalent or "**UNEXPLAINED: write a test that kills it.**"
        lines += [f"- `{r.mutant.id}` ({r.mutant.path}:{r.line}): {reason}", ""]
    if stale:
        lines += ["## Stale mutants", "",
                  "Their text is no longer in the module: update them in "
                  "`benchmarks/mutation.py`.", ""]
        lines += [f"- `{r.mutant.id}`: {r.detail}" for r in stale] + [""]
    lines += [
        "## Not covered here",
        "",
        "- Mutants that only slow a run down or change logging are left out: the list is",
        "  curated for bugs that change a reported number.",
        "- Slow and Ray tests are not run per mutant (2 cores); every mutant above is killed by",
        "  a fast test or explained.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, metavar="ID",
                        help="run these mutants only (the report lists just them)")
    parser.add_argument("--source", choices=("head", "worktree"), default="head",
                        help="scratch copy of HEAD (default) or of the working tree")
    parser.add_argument("--jobs", type=int, default=1, help="scratch copies run in parallel")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help="seconds per mutant's test run")
    parser.add_argument("--doc", default=str(DOC), help="where the report goes")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)

    mutants = MUTANTS if args.only is None else [m for m in MUTANTS if m.id in args.only]
    if args.only is not None and len(mutants) != len(args.only):
        unknown = sorted(set(args.only) - {m.id for m in MUTANTS})
        parser.error(f"--only: unknown mutant(s) {', '.join(unknown)}")
    if args.list:
        for m in mutants:
            print(f"{m.id:36s} {m.path}: {m.what}")
        return 0
    if not PYTHON.exists():
        parser.error(f"{PYTHON} missing: run scripts/test.sh once to create the venv")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            check=True, capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maxup-mutation-") as tmp:
        copies = [Path(tmp) / f"copy{j}" for j in range(max(1, args.jobs))]
        for copy in copies:
            snapshot(args.source, copy)
        rc, out = _run([str(PYTHON), "-c", "import maxup; print(maxup.__file__)"], copies[0], 60)
        if rc != 0 or not out.strip().startswith(str(copies[0])):
            print(f"the scratch copy does not import its own maxup: {out.strip()}",
                  file=sys.stderr)
            return 2
        tests = sorted({t for m in mutants for t in m.tests})
        print(f"baseline: {len(tests)} tests on the unmutated copy", flush=True)
        rc, out = _run(_pytest(tests, first_failure=False), copies[0], 1800)
        if rc != 0:
            print(out[-4000:], file=sys.stderr)
            print("baseline failed: the listed tests must pass before mutating", file=sys.stderr)
            return 2
        free = list(copies)
        results: dict[str, Result] = {}

        def work(m: Mutant) -> Result:
            copy = free.pop()
            try:
                return run_mutant(m, copy, args.timeout)
            finally:
                free.append(copy)

        with concurrent.futures.ThreadPoolExecutor(len(copies)) as pool:
            futures = {pool.submit(work, m): m for m in mutants}
            for fut in concurrent.futures.as_completed(futures):
                r = fut.result()
                results[r.mutant.id] = r
                print(f"{r.status:9s} {r.mutant.id:36s} {r.killed_by or r.detail} "
                      f"({r.seconds:.0f} s)", flush=True)
    ordered = [results[m.id] for m in mutants]
    seconds = time.perf_counter() - t0
    write_doc(ordered, source=args.source, commit=commit, seconds=seconds, path=Path(args.doc))
    bad = [r for r in ordered if r.status == "stale" or
           (r.status == "survived" and not r.mutant.equivalent)]
    print(f"wrote {args.doc}: {sum(r.status == 'killed' for r in ordered)} killed, "
          f"{sum(r.status == 'survived' for r in ordered)} survived, "
          f"{sum(r.status == 'stale' for r in ordered)} stale ({seconds / 60:.1f} min)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
