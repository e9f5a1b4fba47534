from fundus_studio.cli import main

raise SystemExit(main())
