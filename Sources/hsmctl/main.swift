print("hsmctl")
