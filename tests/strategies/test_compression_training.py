"""Training still converges with wire compression: the digits CNN on 2 gloo ranks."""

from __future__ import annotations

from tests.helpers.launch import run_ranks

# Measured (8 epochs, seed 0): without compression odsgd 0.972, dasgd 0.986; with it 0.972 and 0.984.
# A compression that sent wrong values (wrong scale, lost error feedback sign, garbage) ends far below.
MIN_ACCURACY = 0.95


def test_digits_converge_with_fp16_gradients_and_bf16_parameters() -> None:
    runs = [["odsgd", "fp16"], ["dasgd", "bf16"]]  # a gradient algorithm and a model-averaging one
    results = run_ranks("tests.strategies.strategy_worker:digits_accuracy", runs=runs, epochs=8, timeout=280)
    assert results[0] == results[1], "both ranks test the same consensus model"
    for run, accuracy in results[0].items():
        assert accuracy >= MIN_ACCURACY, f"{run}: test accuracy {accuracy:.3f} < {MIN_ACCURACY}"


# Measured with the low-bit reduction (block_size 64): ssgd int8 0.978, int4 0.974; dasgd int8 0.986, int4 0.970.
# odsgd lands at 0.940 (int8) and 0.938 (int4) here, but its single-seed trajectory is that sensitive to any
# rounding of the mean: fp16 without error feedback gives 0.922, bf16 with it 0.964 (none: 0.980).
def test_digits_converge_with_int8_gradients_and_int4_parameters() -> None:
    runs = [["ssgd", "int8"], ["dasgd", "int4"]]  # a gradient algorithm and a model-averaging one
    results = run_ranks("tests.strategies.strategy_worker:digits_accuracy", runs=runs, epochs=8, timeout=280)
    assert results[0] == results[1], "both ranks test the same consensus model"
    for run, accuracy in results[0].items():
        assert accuracy >= MIN_ACCURACY, f"{run}: test accuracy {accuracy:.3f} < {MIN_ACCURACY}"
