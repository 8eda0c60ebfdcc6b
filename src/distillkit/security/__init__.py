"""What a shared config may do: the target allow-list, the config checks and the file-vs-command-line rules."""
