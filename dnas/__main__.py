from dnas.cli import main

if __name__ == "__main__":  # not when a spawned process imports it (cost_models.processes)
    main()
