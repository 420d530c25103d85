"""Images in and out: reference decoding and sanitising, PNG metadata, upload encoding, labelled grids."""
