//! The checker, fed hand-written broken histories: each invariant must be reported.
