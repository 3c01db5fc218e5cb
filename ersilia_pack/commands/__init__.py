"""The command families behind the console scripts that ``ersilia_pack.cli`` names."""
