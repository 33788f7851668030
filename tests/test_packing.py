"""Bit packing (edgeq.qtypes.packing): exact round trips, and one-hot probes that pin the byte
and bit order each docstring promises, so that Numba and C kernels can rely on it."""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from edgeq.qtypes import packing

PLANE_BITS = (4, 2, 1)  # nibbles, crumbs and bit planes


@st.composite
def codes_for(draw, bits: int, group_multiple: int, max_groups: int = 4):
    """(codes (rows, k) uint8 with values < 2**bits, group) with k a multiple of the group."""
    group = group_multiple * draw(st.integers(1, 8))
    rows = draw(st.integers(1, 3))
    k = group * draw(st.integers(1, max_groups))
    codes = draw(hnp.arrays(np.uint8, (rows, k), elements=st.integers(0, (1 << bits) - 1)))
    return codes, group


# --- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", PLANE_BITS)
@given(data=st.data())
def test_planes_round_trip(bits, data):
    codes, group = data.draw(codes_for(bits, 8 // bits))
    packed = packing.pack_planes(codes, group, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (codes.shape[0], codes.shape[1] * bits // 8)
    np.testing.assert_array_equal(packing.unpack_planes(packed, group, bits), codes)


@given(data=st.data())
def test_bits_round_trip_any_length(data):
    rows, k = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 70))
    codes = data.draw(hnp.arrays(np.uint8, (rows, k), elements=st.integers(0, 1)))
    packed = packing.pack_bits(codes)
    assert packed.shape == (rows, -(-k // 8))
    np.testing.assert_array_equal(packing.unpack_bits(packed, k), codes)


@given(data=st.data())
def test_base3_round_trip_any_group_size(data):
    # group sizes 1..23 include every residue mod 5 (padding of 0..4 trits per group)
    group = data.draw(st.integers(1, 23))
    shape = (data.draw(st.integers(1, 3)), group * data.draw(st.integers(1, 3)))
    codes = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 2)))
    packed = packing.pack_base3(codes, group)
    stride = packing.base3_bytes_per_group(group)
    assert stride == -(-group // 5)
    assert packed.shape == (codes.shape[0], codes.shape[1] // group * stride)
    np.testing.assert_array_equal(packing.unpack_base3(packed, group), codes)


def test_base3_every_value_of_a_byte():
    """All 3**5 trit patterns: byte = ceil(v * 256 / 243) with v = sum t_l 3**(4-l), distinct,
    and unpacking recovers the five trits."""
    trits = np.array(np.unravel_index(np.arange(243), (3,) * 5), dtype=np.uint8).T  # t0 first
    values = (trits.astype(np.int64) * 3 ** np.arange(4, -1, -1)).sum(axis=1)
    np.testing.assert_array_equal(values, np.arange(243))
    # group of 5: byte 0 holds trits 0..4 (S = 1, so trit l sits at position l)
    packed = packing.pack_base3(trits, 5)
    assert packed.shape == (243, 1)
    expected = -(-(np.arange(243) * 256) // 243)
    np.testing.assert_array_equal(packed[:, 0], expected)
    assert len(np.unique(packed)) == 243
    np.testing.assert_array_equal(packing.unpack_base3(packed, 5), trits)


def test_base3_unpacks_any_byte_to_valid_trits():
    """The 13 byte values no packer writes still decode to trits in {0, 1, 2} (no garbage codes)."""
    every = np.arange(256, dtype=np.uint8).reshape(256, 1)
    trits = packing.unpack_base3(every, 5)
    assert trits.max() <= 2


# --- one-hot bit-order probes -------------------------------------------------------------------
@pytest.mark.parametrize("group", [8, 16, 32])
def test_nibble_order_one_hot(group):
    """Byte j of a group holds code j in bits 0-3 and code j + G/2 in bits 4-7."""
    k = 2 * group
    for j in range(k):
        codes = np.zeros((1, k), np.uint8)
        codes[0, j] = 0b1011
        packed = packing.pack_planes(codes, group, 4)
        g, pos = divmod(j, group)
        byte = g * group // 2 + pos % (group // 2)
        shift = 0 if pos < group // 2 else 4
        expected = np.zeros(k // 2, np.uint8)
        expected[byte] = 0b1011 << shift
        np.testing.assert_array_equal(packed[0], expected, err_msg=f"code {j}")


@pytest.mark.parametrize("group", [4, 8, 12, 64])
def test_crumb_order_one_hot(group):
    """Byte j of a group holds codes j + l*G/4 in bits 2l..2l+1."""
    k = 2 * group
    quarter = group // 4
    for j in range(k):
        codes = np.zeros((1, k), np.uint8)
        codes[0, j] = 0b10
        packed = packing.pack_planes(codes, group, 2)
        g, pos = divmod(j, group)
        plane, byte = divmod(pos, quarter)
        expected = np.zeros(k // 4, np.uint8)
        expected[g * quarter + byte] = 0b10 << (2 * plane)
        np.testing.assert_array_equal(packed[0], expected, err_msg=f"code {j}")


@pytest.mark.parametrize("group", [8, 16, 24])
def test_bit_plane_order_one_hot(group):
    """pack_planes with 1 bit: byte j of a group holds codes j + l*G/8 in bit l."""
    k = 2 * group
    eighth = group // 8
    for j in range(k):
        codes = np.zeros((1, k), np.uint8)
        codes[0, j] = 1
        g, pos = divmod(j, group)
        plane, byte = divmod(pos, eighth)
        expected = np.zeros(k // 8, np.uint8)
        expected[g * eighth + byte] = 1 << plane
        np.testing.assert_array_equal(packing.pack_planes(codes, group, 1)[0], expected, err_msg=f"code {j}")


@pytest.mark.parametrize("k", [1, 7, 8, 9, 16, 21])
def test_bit_order_one_hot(k):
    """Bit i of byte j holds code 8j + i, least significant first; padding bits are 0."""
    for j in range(k):
        codes = np.zeros((1, k), np.uint8)
        codes[0, j] = 1
        expected = np.zeros(-(-k // 8), np.uint8)
        expected[j // 8] = 1 << (j % 8)
        np.testing.assert_array_equal(packing.pack_bits(codes)[0], expected, err_msg=f"code {j}")
    ones = packing.pack_bits(np.ones((1, k), np.uint8))[0]
    assert ones[-1] == (1 << (k - 8 * (len(ones) - 1))) - 1  # padding bits stay 0


@pytest.mark.parametrize("group", [5, 10, 7, 1, 13])
def test_base3_order_one_hot(group):
    """Byte j of a group holds trits j + l*S (S = ceil(G/5)) with weight 3**(4-l); positions
    past G within a group are padded with trit 1 (code 0)."""
    stride = -(-group // 5)
    k = 2 * group
    for j in range(k):
        trits = np.zeros((1, k), np.uint8)
        trits[0, j] = 2
        packed = packing.pack_base3(trits, group)
        g, pos = divmod(j, group)
        values = np.zeros(2 * stride, np.int64)
        for gg in range(2):
            for byte in range(stride):
                for plane in range(5):
                    p = byte + plane * stride
                    t = 1 if p >= group else (2 if (gg, p) == (g, pos) else 0)
                    values[gg * stride + byte] += t * 3 ** (4 - plane)
        expected = -(-(values * 256) // 243)
        np.testing.assert_array_equal(packed[0], expected, err_msg=f"trit {j}")
