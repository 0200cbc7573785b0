import pytest
import torch

from embquant.codecs import packing
from embquant.errors import CodecMismatch


def test_byte_exact_example_4_bits():
    # 4 bits: 16 symbols per word, symbol j at bit 4*j, least significant first.
    sym = torch.tensor([[1, 2, 3, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 5]])
    words = packing.pack(sym, 4)
    assert words.shape == (1, 2)
    # word 0: 0x9000_0000_0000_F321 (top nibble 9 -> negative int64), word 1: 5
    expect0 = 0x9000_0000_0000_F321 - (1 << 64)
    assert words.tolist() == [[expect0, 5]]
    assert words[0, 0].item().to_bytes(8, "little", signed=True) == bytes([0x21, 0xF3, 0, 0, 0, 0, 0, 0x90])
    assert packing.unpack(words, 4, 17).tolist() == sym.tolist()


def test_byte_exact_example_3_bits():
    # 3 bits: 21 symbols per word, bit 63 unused and zero.
    sym = torch.tensor([[7] * 21 + [1]])
    words = packing.pack(sym, 3)
    assert words.tolist() == [[(1 << 63) - 1, 1]]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 16])
@pytest.mark.parametrize("length", [1, 5, 63, 64, 65, 100, 384, 385])
def test_round_trip(bits, length):
    g = torch.Generator().manual_seed(bits * 1000 + length)
    sym = torch.randint(0, 1 << bits, (7, length), generator=g)
    words = packing.pack(sym, bits)
    assert words.dtype == torch.int64
    assert words.shape == (7, -(-length // (64 // bits)))
    assert torch.equal(packing.unpack(words, bits, length), sym)
    assert bool(packing.padding_is_clean(words, bits, length).all())


def test_rows_are_independent():
    sym = torch.randint(0, 16, (5, 40))
    words = packing.pack(sym, 4)
    for i in range(5):
        assert torch.equal(packing.pack(sym[i : i + 1], 4), words[i : i + 1])


def test_wrong_word_count_is_refused():
    with pytest.raises(CodecMismatch, match="words per row"):
        packing.unpack(torch.zeros(2, 3, dtype=torch.int64), 4, 17)


def test_dirty_padding_detected():
    words = packing.pack(torch.ones(1, 17, dtype=torch.int64), 4)
    words[0, 1] |= 1 << 40
    assert not bool(packing.padding_is_clean(words, 4, 17).all())
