from craft_ray.cli import main

main()
