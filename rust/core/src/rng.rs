//! Counter-based random numbers: a pure function of (seed, epoch, sample index).
