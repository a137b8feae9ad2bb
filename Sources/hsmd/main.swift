print("hsmd")
