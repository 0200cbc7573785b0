"""Status codes a kernel reports per row (every backend's; the caller turns them into
the reference's errors)."""

OK = 0
BAD_PADDING = 1  # unused bits of a word are not zero
BAD_SYMBOL = 2  # a symbol at or above the codec's level count
NOT_FINITE = 3  # the input row, or the decoded row, is not finite
NOT_UNIT = 4  # norm='unit' and the row's norm is off by more than the tolerance
EXTRA_BITS = 5  # transform: a row carries bits past the ones the codec's allocation uses
