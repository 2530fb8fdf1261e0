"""capital-lookup: a teachloop example environment with a tool and a weighted grader."""
