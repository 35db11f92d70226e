"""Stock handlers shipped with eventrunner, named without a module in pipeline files ("shell")."""
