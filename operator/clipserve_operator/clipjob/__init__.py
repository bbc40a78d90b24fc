"""ClipJob: a corpus embedded by `clipserve embed` as an Indexed Job (issue 27)."""
