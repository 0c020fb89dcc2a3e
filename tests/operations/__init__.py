"""Operations: the command line, install and upgrade, the shipped scripts, retention, privileges."""
