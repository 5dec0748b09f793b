//! vMME
