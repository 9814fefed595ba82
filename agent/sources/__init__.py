"""Scanner sources: each turns one kind of device input into :class:`~agent.read.Read` objects.

Every source has the same small shape::

    source.start(submit)   # begin reading; call submit(read) for each scan
    source.stop()          # stop reading and release the device
    source.done            # a threading.Event, set when the input has ended for good
    source.present()       # True while its device is there (plugged in, delivering frames)

Sources know nothing of codes, the ledger, feedback or MQTT.
"""
