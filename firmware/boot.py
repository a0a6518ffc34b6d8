# Runs first on every reset: keep it tiny; all the work is in main.py and the compiled lib/.
import gc

gc.collect()
