"""Real parts for the tests: a mosquitto broker, socat pseudo-terminals, agent subprocesses."""
