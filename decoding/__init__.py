"""Decoding strategies: beam, grammar-constrained, best-of-N with execution, reranking, retrieval."""
