"""The programs that run on the model environment's interpreter, copied into each bundle's
``app/`` folder: ``worker.py`` (the load-once worker), ``warm.py`` (the warm runner) and
``framing.py`` (the frames they speak with the server, which reads them with the same module;
``app/ersilia_framing.py`` in a bundle). Standard library only: that interpreter does not have
ersilia_pack installed, and this package imports nothing of its own here."""
