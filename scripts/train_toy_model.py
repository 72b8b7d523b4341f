"""Train the toy SEG demo model shipped in src/smoothed_energy_guidance/toy/weights (see toy/train.py)."""

from smoothed_energy_guidance.toy.train import main

if __name__ == "__main__":
    main()
