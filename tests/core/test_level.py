"""The Level spec: validation with named errors, selection, and whole-spec assignment."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nestlearn.core import Level, assign_levels, check_levels

SGD = optax.sgd(0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"period": 0}, r"'lvl': period must be an integer >= 1, got period=0"),
        ({"period": -2}, r"period=-2"),
        ({"period": 1.5}, r"period=1.5"),
        ({"period": True}, r"period=True"),
        ({"accumulate": "max"}, r"'lvl': accumulate must be one of .*accumulate='max'"),
        ({"select": "w(["}, r"'lvl': select='w\(\[' is not a valid regular expression"),
        ({"select": 3}, r"'lvl': select must be .* got select=3"),
        ({"rule": "adam"}, r"'lvl': rule must be an optax GradientTransformation"),
        ({"name": ""}, r"name must be a non-empty string"),
    ],
)
def test_bad_level_raises_naming_it(kwargs, message):
    spec = {"name": "lvl", "select": "w", "rule": SGD, **kwargs}
    with pytest.raises(ValueError, match=message):
        Level(**spec)


def test_level_is_frozen_and_hashable():
    level = Level("a", "w", SGD, period=np.int64(3))
    assert level.period == 3 and type(level.period) is int
    assert hash(level) == hash(Level("a", "w", SGD, period=3))
    with pytest.raises(AttributeError):
        level.period = 2


def test_selects_regex_callable_and_rest():
    assert Level("a", r"bias$", SGD).selects("blocks/0/w_in/bias", None)
    assert not Level("a", r"bias$", SGD).selects("blocks/0/bias/kernel", None)
    two_d = Level("a", lambda path, leaf: leaf.ndim == 2, SGD)
    assert two_d.selects("x", jnp.zeros((2, 2))) and not two_d.selects("x", jnp.zeros(2))
    rest = Level("a", None, SGD)
    assert rest.is_rest and not rest.selects("anything", None)


def test_assign_levels_in_leaf_order_with_rest():
    params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2), "cms": [jnp.zeros(1), jnp.zeros(1)]}
    levels = (Level("bias", r"^b$", SGD), Level("cms1", r"cms/1", SGD), Level("rest", None, SGD))
    # jax.tree.leaves order: b, cms/0, cms/1, w.
    assert assign_levels(levels, params) == ["bias", "rest", "cms1", "rest"]


def test_check_levels_rejects_bad_specs():
    with pytest.raises(ValueError, match="at least one Level"):
        check_levels(())
    with pytest.raises(ValueError, match=r"levels\[1\] must be a Level"):
        check_levels((Level("a", "w", SGD), SGD))
    with pytest.raises(ValueError, match=r"duplicate level name 'a' \(levels\[0\] and levels\[2\]"):
        check_levels((Level("a", "w", SGD), Level("b", "v", SGD), Level("a", "u", SGD)))
    with pytest.raises(ValueError, match=r"at most one level may have select=None.*\['a', 'b'\]"):
        check_levels((Level("a", None, SGD), Level("b", None, SGD)))
