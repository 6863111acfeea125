"""Python's random.Random, compiled: the same Mersenne Twister words and the same draws, for the
numba-compiled instance creation in data/shard_creation.py (its output equals the original's, which
draws from random.Random(--random_seed)).

State: int64[625], the 624 twister words then the read position, as random.Random.getstate() holds
them. random() takes two words, getrandbits(k <= 32) the top k bits of one word, and randint/shuffle
repeat getrandbits while the value is out of range, exactly as CPython does.
"""
from __future__ import annotations

import functools
import random

import numpy as np

try:
    from numba import njit

    COMPILED = True
except ImportError:  # the same functions then run as plain Python: identical output, many times slower
    COMPILED = False

    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda function: function)



def mersenne_state(seed: int) -> np.ndarray:
    """The twister state of random.Random(seed), as an array the compiled draws update in place."""
    return np.array(random.Random(seed).getstate()[1], dtype=np.int64)


@njit(cache=True)
def _twist(state: np.ndarray) -> None:
    """Regenerate the 624 words (MT19937's recurrence; wrap-around indices without modulo, for speed)."""
    for k in range(624):
        following = state[k + 1] if k < 623 else state[0]
        y = (state[k] & 0x80000000) | (following & 0x7FFFFFFF)
        value = state[k + 397 if k < 227 else k - 227] ^ (y >> 1)
        if y & 1:
            value ^= 0x9908B0DF
        state[k] = value


@njit(cache=True)
def _word(state: np.ndarray) -> int:
    position = state[624]
    if position >= 624:
        _twist(state)
        position = 0
    y = state[position]
    state[624] = position + 1
    y ^= y >> 11
    y ^= (y << 7) & 0x9D2C5680
    y ^= (y << 15) & 0xEFC60000
    y ^= y >> 18
    return y


@njit(cache=True)
def _random(state: np.ndarray) -> float:
    high = _word(state) >> 5
    low = _word(state) >> 6
    return (high * 67108864.0 + low) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def _below(state: np.ndarray, n: int) -> int:
    shift = 32
    while (n >> (32 - shift)) > 0:  # shift = 32 - n.bit_length()
        shift -= 1
    value = _word(state) >> shift
    while value >= n:
        value = _word(state) >> shift
    return value


@njit(cache=True)
def _randint(state: np.ndarray, low: int, high: int) -> int:
    return low + _below(state, high - low + 1)


@njit(cache=True)
def _shuffle(state: np.ndarray, items: np.ndarray, count: int) -> None:
    """random.shuffle of items[:count] (a draw below i + 1 for i from count - 1 down to 1)."""
    if count < 2:
        return
    shift = 32
    while (count >> (32 - shift)) > 0:
        shift -= 1
    smallest = 1 << (31 - shift)  # the bit length stays while the bound is at least this
    for i in range(count - 1, 0, -1):
        bound = i + 1
        while bound < smallest:
            smallest >>= 1
            shift += 1
        j = _word(state) >> shift
        while j >= bound:
            j = _word(state) >> shift
        items[i], items[j] = items[j], items[i]


@njit(cache=True)
def _shuffled_range(state: np.ndarray, n: int) -> np.ndarray:
    """The permutation random.shuffle applies to a list of n items: new[i] = old[result[i]]."""
    order = np.arange(n)
    _shuffle(state, order, n)
    return order


@njit(cache=True)
def _draw_sample(state: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per size n: random(), randint(0, n - 1), and the first item of a shuffled range(min(n, 600))."""
    out = np.empty(3 * len(sizes), dtype=np.float64)
    for index, n in enumerate(sizes):
        out[3 * index] = _random(state)
        out[3 * index + 1] = _randint(state, 0, n - 1)
        out[3 * index + 2] = _shuffled_range(state, min(n, 600))[0]
    return out


@functools.cache
def draws_match_python_random() -> bool:
    """True when the compiled draws equal random.Random's on this interpreter (checked once per process)."""
    sizes = [*range(1, 300), 509, 1000, 30522, 2**20 + 1, 2**31 - 1]
    rng = random.Random(271828)
    expected: list[float] = []
    for n in sizes:
        expected += [rng.random(), rng.randint(0, n - 1)]
        order = list(range(min(n, 600)))
        rng.shuffle(order)
        expected.append(order[0])
    state = mersenne_state(271828)
    drawn = _draw_sample(state, np.array(sizes, dtype=np.int64))
    return drawn.tolist() == expected and state.tolist() == list(rng.getstate()[1])
