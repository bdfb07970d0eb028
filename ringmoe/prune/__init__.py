"""Post-training expert pruning (issue 9): parameter budgets now; calibration and strategies to follow."""
