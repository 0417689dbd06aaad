"""Weight sparsity: magnitude sparsity and const sparsity."""
