"""The Philox4x32 spec (qkernels/reference/philox.py) and the per-call key draw.

* Random123's known-answer vectors (tests/kat_vectors of DEShawResearch/random123, philox4x32 at 10 and 7
  rounds); the same vectors pin the C++ header (csrc/tests/test_philox.cpp, under ctest) and the Triton helper
  (tests/test_philox_triton.py, which also checks it against this reference on random counters and keys);
* the int64 arithmetic against a scalar Python-int implementation on random counters and keys (the 16-bit split
  of the products, words with the top bit set, signed inputs taken as bit patterns);
* the element convention: counter (i_lo, i_hi, offset_lo, offset_hi), key (seed_lo, seed_hi);
* draw_key: follows torch.manual_seed, an explicit generator, get_rng_state/set_rng_state; consecutive draws
  differ; on a GPU, CUDA-graph replays draw the eager sequence.
"""

import pytest
import torch

from qkernels.reference import philox as ph

from conftest import DEVICES, HAS_CUDA

# (rounds, counter, key, output), hex uint32 words.
KAT = [
    (10, (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    (7, (0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
]


@pytest.mark.parametrize("rounds, counter, key, want", KAT)
def test_known_answers(rounds, counter, key, want):
    got = ph.philox4x32(counter, key, rounds)
    assert [int(w) for w in got] == list(want)
    # the same as tensors, with a batch dimension
    batch = ph.philox4x32([torch.full((3,), c) for c in counter], [torch.tensor(k) for k in key], rounds)
    for g, w in zip(batch, want):
        assert g.dtype == torch.int64 and g.shape == (3,) and bool((g == w).all())


def _scalar_philox(c, k, rounds):
    """Philox4x32 on Python ints, written from Random123's philox4x32round / bumpkey."""
    c, k = list(c), list(k)
    for _ in range(rounds):
        p0, p1 = ph.M0 * c[0], ph.M1 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k[1], p0 & 0xFFFFFFFF]
        k = [(k[0] + ph.W0) & 0xFFFFFFFF, (k[1] + ph.W1) & 0xFFFFFFFF]
    return c


def test_against_python_ints():
    g = torch.Generator().manual_seed(0)
    words = torch.randint(0, 2**32, (6, 40), dtype=torch.int64, generator=g)
    words[:, :4] = 0xFFFFFFFF  # the largest products
    got = torch.stack(ph.philox4x32(words[:4], words[4:]))
    want = [_scalar_philox(words[:4, j].tolist(), words[4:, j].tolist(), 10) for j in range(words.shape[1])]
    assert torch.equal(got, torch.tensor(want).T)
    # int32 words holding the same bit patterns (negative values) give the same words
    signed = [w.to(torch.int32) for w in words]
    assert torch.equal(torch.stack(ph.philox4x32(signed[:4], signed[4:])), got)


def test_word_count_is_checked():
    with pytest.raises(ValueError, match="counter"):
        ph.philox4x32((0, 0, 0), (0, 0))
    with pytest.raises(ValueError, match="key"):
        ph.philox4x32((0, 0, 0, 0), (0,))


def test_element_convention():
    seed, offset = 0x0123456789ABCDEF, 0x02468ACE013579BD
    index = torch.tensor([0, 1, 0x1234567890, 2**40 + 5])
    got = ph.element_words(torch.tensor([seed, offset]), index)
    for j, i in enumerate(index.tolist()):
        want = _scalar_philox((i & 0xFFFFFFFF, i >> 32, offset & 0xFFFFFFFF, offset >> 32),
                              (seed & 0xFFFFFFFF, seed >> 32), 10)
        assert [int(w[j]) for w in got] == want
    # csrc/tests/test_philox.cpp and at::Philox4_32(seed, subsequence=offset, offset=i) give these words
    assert [int(w[2]) for w in got] == [0xC7E94312, 0x09FE211F, 0xCEBA1894, 0x3FDE2DC9]


@pytest.mark.parametrize("device", DEVICES)
def test_draw_key_follows_the_generator(device):
    torch.manual_seed(1234)
    a = ph.draw_key(device)
    b = ph.draw_key(device)
    assert a.dtype == torch.int64 and a.shape == (2,) and a.device.type == device
    assert bool(((a >= 0) & (a < 2**ph.KEY_BITS)).all())
    assert not torch.equal(a, b)  # consecutive calls get fresh randomness
    torch.manual_seed(1234)
    assert torch.equal(ph.draw_key(device), a)

    state = torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state()
    c = ph.draw_key(device)
    if device == "cuda":
        torch.cuda.set_rng_state(state)
    else:
        torch.set_rng_state(state)
    assert torch.equal(ph.draw_key(device), c)

    # An explicit generator: reproducible by its own seed, and the default generator is left alone.
    gen = torch.Generator(device).manual_seed(7)
    d = ph.draw_key(device, gen)
    torch.manual_seed(1234)
    assert torch.equal(ph.draw_key(device, torch.Generator(device).manual_seed(7)), d)
    assert torch.equal(ph.draw_key(device), a)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_draw_key_in_a_cuda_graph():
    """Each replay of a captured draw gives a fresh key, the one the eager call in its place would have drawn."""
    torch.cuda.manual_seed(5)
    eager = [ph.draw_key("cuda") for _ in range(3)]
    graph = torch.cuda.CUDAGraph()
    torch.cuda.manual_seed(5)
    with torch.cuda.graph(graph):
        key = ph.draw_key("cuda")
    replays = []
    for _ in range(3):
        graph.replay()
        replays.append(key.clone())
    for r, e in zip(replays, eager):
        assert torch.equal(r, e)
