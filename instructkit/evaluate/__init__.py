"""Stage 3 and the numbers of stage 4: lm-evaluation-harness, judge-free task metrics, intervals and tests."""
