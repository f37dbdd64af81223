"""Error messages read as sentences: a count agrees with its noun, and a torch tensor handed to the NumPy
API is told where tensors go (``cadagrad.torch``), without cadagrad importing torch to find out."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cadagrad

HINT = r"for torch tensors use cadagrad\.torch\.Adagrad or cadagrad\.torch\.SGD"


class Tensor:
    """Stands for torch.Tensor where torch is not installed: the check looks at the class's module only."""

    __module__ = "torch"


class Parameter(Tensor):
    __module__ = "torch.nn.parameter"


# ---------------------------------------------------------------------------------------------------
# Counts


def test_one_param_and_two_grads_reads_one_array():
    opt = cadagrad.Adagrad([np.zeros(3)])
    with pytest.raises(ValueError, match=r"^grads: expected 1 array \(one per param\), got 2$"):
        opt.step([np.zeros(3), np.zeros(3)])


def test_two_params_and_one_grad_reads_two_arrays():
    opt = cadagrad.SGD([np.zeros(3), np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match=r"^grads: expected 2 arrays \(one per param\), got 1$"):
        opt.step([np.zeros(3)])


def test_caller_owned_state_count_reads_one_array():
    with pytest.raises(ValueError, match=r"^momentum_buffers: expected 1 array \(one per param\), got 0$"):
        cadagrad.sgd_step([np.zeros(3)], [np.zeros(3)], [], step=1, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"^sums: expected a list of 1 array, got int$"):
        cadagrad.adagrad_step([np.zeros(3)], [np.zeros(3)], 0, step=1)


def test_state_dict_with_the_wrong_number_of_sums_reads_one_array():
    opt = cadagrad.Adagrad([np.zeros(3)])
    state = opt.state_dict()
    state["sum"] = []
    with pytest.raises(ValueError, match=r"^state_dict\['sum'\]: expected a list of 1 array$"):
        opt.load_state_dict(state)


def test_an_index_past_a_one_row_table_reads_one_row():
    opt = cadagrad.Adagrad(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"^indices\[0\]: 3 is out of range for params\[0\] with 1 row$"):
        opt.step_rows(np.array([3]), np.ones((1, 4)))


# ---------------------------------------------------------------------------------------------------
# A torch tensor given to the NumPy API


@pytest.mark.parametrize("cls", [Tensor, Parameter])
@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda t: cadagrad.Adagrad(t), "params"),
        (lambda t: cadagrad.SGD([t], lr=0.1), r"params\[0\]"),
        (lambda t: cadagrad.Adagrad(np.zeros(3)).step(t), "grads"),
        (lambda t: cadagrad.SGD([np.zeros(3), np.zeros(2)], lr=0.1).step(t), "grads"),
        (lambda t: cadagrad.Adagrad([np.zeros(3)]).step([t]), r"grads\[0\]"),
        (lambda t: cadagrad.adagrad_step(t, t, t, step=1), "params"),
        (lambda t: cadagrad.adagrad_step(np.zeros(3), np.zeros(3), t, step=1), "sums"),
        (lambda t: cadagrad.sgd_step([np.zeros(3)], [t], step=1, lr=0.1), r"grads\[0\]"),
        (lambda t: cadagrad.Adagrad(np.zeros((3, 2))).step_rows(t, np.zeros((1, 2))), "indices"),
    ],
)
def test_a_torch_tensor_given_to_the_numpy_api_points_to_cadagrad_torch(cls, call, argument):
    with pytest.raises(TypeError, match=rf"^{argument}: expected .*, got {cls.__name__} \(.*{HINT}"):
        call(cls())


def test_a_real_torch_tensor_gets_the_hint_and_is_not_written():
    torch = pytest.importorskip("torch", reason="needs torch (pip install -e '.[test]' installs it)")
    p = torch.ones(3)
    with pytest.raises(TypeError, match=rf"^params: expected .*, got Tensor \(.*{HINT}"):
        cadagrad.Adagrad(p)
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(TypeError, match=rf"^params\[0\]: expected .*, got Parameter \(.*{HINT}"):
        cadagrad.SGD([w], lr=0.1)
    opt = cadagrad.Adagrad(p.numpy())                # the documented way round: a view, no copy
    with pytest.raises(TypeError, match=rf"^grads: expected .*, got Tensor \(.*{HINT}"):
        opt.step(torch.ones(3))
    assert p.tolist() == [1.0, 1.0, 1.0] and opt.step_count == 0


def test_other_objects_get_no_torch_hint():
    with pytest.raises(TypeError) as info:
        cadagrad.Adagrad(np.zeros(3)).step([1.0, 2.0, 3.0])
    assert "torch" not in str(info.value)


def test_the_hint_does_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import cadagrad
        class Tensor:
            pass
        Tensor.__module__ = "torch"
        try:
            cadagrad.Adagrad(np.zeros(3)).step(Tensor())
        except TypeError as e:
            assert "cadagrad.torch" in str(e), e
        assert "torch" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
