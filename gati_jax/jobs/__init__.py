"""The main job and its phases (train, explore, plan, benchmark, report), one module per phase."""
